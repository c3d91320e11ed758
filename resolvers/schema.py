"""The GraphQL schema: queries and mutations of every domain, merged; `schema.graphql` is its SDL."""

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from gateway.observability import OperationInfo
from resolvers.documents import CachedDocuments
from resolvers.elements.mutations import ElementMutations
from resolvers.elements.queries import ElementQueries
from resolvers.execution import MutationsInOrder
from resolvers.extensions import ErrorCodes, RequestChecks
from resolvers.feedback.mutations import FeedbackMutations
from resolvers.limits import QueryLimits
from resolvers.scalars import SCALARS
from resolvers.steps.mutations import StepMutations
from resolvers.steps.queries import StepQueries
from resolvers.subscriptions import Subscription
from resolvers.threads.changes import ThreadChangesMutations
from resolvers.threads.mutations import ThreadMutations
from resolvers.threads.queries import ThreadQueries
from resolvers.users.mutations import UserMutations
from resolvers.users.queries import UserQueries

Query = merge_types("Query", (UserQueries, ThreadQueries, StepQueries, ElementQueries))
Mutation = merge_types(
    "Mutation",
    (
        UserMutations,
        ThreadMutations,
        ThreadChangesMutations,
        StepMutations,
        FeedbackMutations,
        ElementMutations,
    ),
)


class GatewaySchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Client errors are answers, not incidents; `ErrorCodes` logs the unexpected ones."""


def build_schema(**kwargs: Any) -> strawberry.Schema:
    return GatewaySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        # OperationInfo first: it finishes last, so it sees the codes ErrorCodes gives.
        extensions=[OperationInfo, ErrorCodes, RequestChecks, QueryLimits, CachedDocuments],
        config=StrawberryConfig(scalar_map=SCALARS),
        execution_context_class=MutationsInOrder,
        **kwargs,
    )


schema = build_schema()
