"""How a document of several mutations runs: each root field in order, in its own transaction, and
each answers for itself.

GraphQL's null propagation would turn one failed (non-null) mutation field into `data: null`,
hiding the writes of the fields before it, which were committed. Here `data` keeps the fields that
ran; the failed one is null with its error; the fields after it are not run, each null with a
`NOT_RUN` error. When nothing succeeded (the first field failed), `data` is null as before.
"""

from typing import Any

from graphql import GraphQLError, GraphQLObjectType, located_error
from graphql.execution.collect_fields import FieldDetailsList, GroupedFieldSet
from graphql.pyutils import AwaitableOrValue, Path, Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gateway.errors import NotRun


class MutationsInOrder(StrawberryGraphQLCoreExecutionContext):
    def execute_fields_serially(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        async def in_order() -> Any:
            results: dict[str, Any] = {}
            succeeded, failed = 0, None
            for response_name, details in grouped_field_set.items():
                field_path = Path(path, response_name, parent_type.name)
                if failed is not None:
                    not_run = NotRun(
                        f"not run: `{failed}` before it failed, and the fields after it are skipped"
                    )
                    self.collected_errors.add(
                        located_error(not_run, _nodes(details), field_path.as_list()), field_path
                    )
                    results[response_name] = None
                    continue
                try:
                    result = self.execute_field(
                        parent_type, source_value, details, field_path, position_context
                    )
                    if result is Undefined:
                        continue
                    results[response_name] = await result if self.is_awaitable(result) else result
                    succeeded += 1
                except GraphQLError as error:
                    self.collected_errors.add(error, field_path)
                    results[response_name] = None
                    failed = response_name
            return results if succeeded else None  # nothing done: `data: null`, as GraphQL answers

        return in_order()


def _nodes(details: FieldDetailsList) -> list[Any]:
    return [item.node for item in details]
