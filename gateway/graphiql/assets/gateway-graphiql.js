// The gateway's GraphiQL page (a file, not inline, so the page's CSP can forbid inline script).
// With credentials configured it opens the Headers editor, pre-filled, for the developer's key.
(function () {
  const authRequired = document.getElementById("gateway-auth-notice").dataset.authRequired === "true";
  const url = window.location.origin + window.location.pathname;
  const fetcher = GraphiQL.createFetcher({ url: url });
  const explorer = GraphiQLPluginExplorer.explorerPlugin();
  const defaultHeaders = authRequired ? '{\n  "Authorization": "Bearer <your API key or user token>"\n}' : undefined;
  function App() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      plugins: [explorer],
      defaultHeaders: defaultHeaders,
      defaultEditorToolsVisibility: authRequired ? "headers" : true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    });
  }
  ReactDOM.createRoot(document.getElementById("graphiql")).render(React.createElement(App));
})();
