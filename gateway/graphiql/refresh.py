"""Refresh the GraphiQL page's assets from the npm registry: `python -m gateway.graphiql.refresh`.

The gateway serves GraphiQL from its own package, so the page works with no internet access. This
fetches the pinned npm packages below, checks each tarball against the registry's integrity hash,
and copies the files the page loads, with each package's licence, into `assets/`. To upgrade, change
a version here, run it, load /graphql (the browser test does), and commit the result.
"""

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx

REGISTRY = "https://registry.npmjs.org"
ASSETS = Path(__file__).parent / "assets"
# package, version, {file in the package: file name under assets/}
PACKAGES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("react", "18.2.0", {"umd/react.production.min.js": "react.production.min.js"}),
    ("react-dom", "18.2.0", {"umd/react-dom.production.min.js": "react-dom.production.min.js"}),
    ("graphiql", "3.8.3", {"graphiql.min.js": "graphiql.min.js", "graphiql.min.css": "graphiql.min.css"}),
    (
        "@graphiql/plugin-explorer",
        "1.0.2",
        {"dist/index.umd.js": "plugin-explorer.umd.js", "dist/style.css": "plugin-explorer.css"},
    ),
)
LICENCE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "license")


def _verified_tarball(http: httpx.Client, name: str, version: str) -> tarfile.TarFile:
    meta = http.get(f"{REGISTRY}/{name}/{version}").raise_for_status().json()
    algorithm, _, expected = meta["dist"]["integrity"].partition("-")
    data = http.get(meta["dist"]["tarball"]).raise_for_status().content
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{name}@{version}: the tarball does not match the registry's integrity hash")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def main() -> None:
    ASSETS.mkdir(exist_ok=True)
    manifest: dict[str, dict[str, object]] = {}
    with httpx.Client(timeout=60, follow_redirects=True) as http:
        for name, version, files in PACKAGES:
            archive = _verified_tarball(http, name, version)
            members = {member.name.removeprefix("package/"): member for member in archive.getmembers()}
            slug = name.replace("@", "").replace("/", "-")
            licence = next((item for item in LICENCE_NAMES if item in members), None)
            wanted = {**files, **({licence: f"{slug}.LICENSE.txt"} if licence else {})}
            for source, target in wanted.items():
                extracted = archive.extractfile(members[source])
                assert extracted is not None, source
                (ASSETS / target).write_bytes(extracted.read())
            if licence is None:
                # Some packages of the GraphiQL monorepo ship no licence file: they are under the
                # monorepo's, which is graphiql's (fetched first).
                package = json.load(archive.extractfile(members["package.json"]))  # type: ignore[arg-type]
                repository = package["repository"]
                where = f"{repository['url']} ({repository.get('directory', '')})"
                note = f"{name}@{version} declares the licence {package['license']} of {where}:\n\n"
                graphiql_licence = (ASSETS / "graphiql.LICENSE.txt").read_text()
                (ASSETS / f"{slug}.LICENSE.txt").write_text(note + graphiql_licence)
            manifest[name] = {"version": version, "files": sorted({*files.values(), f"{slug}.LICENSE.txt"})}
    (ASSETS / "versions.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"GraphiQL assets refreshed in {ASSETS}")


if __name__ == "__main__":
    main()
