"""Property-based fuzzing of the HTTP API from its OpenAPI document: never a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.integration

#: Generated requests per operation; 8 operations, so a few hundred in all.
EXAMPLES_PER_OPERATION = 40


def test_api_for_any_generated_request_never_answers_5xx(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    checked = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=api_url, timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        call()
        checked.append(operation.label)

    assert len(checked) == len(operations) >= 8
