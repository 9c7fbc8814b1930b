"""A small HTTP client of the producer API, used by ``batchgrid --api URL``."""

from typing import Any

import httpx

from batchgrid.errors import (
    AuthError,
    BrokerUnavailableError,
    ConfigError,
    InputError,
    JobNotFoundError,
    JobStateError,
)
from batchgrid.jobs import JobRecord
from batchgrid.schemas import ImagesRequest, TablesRequest

__all__ = ["ApiClient"]

#: Seconds one HTTP call may take before the CLI reports the producer unreachable.
REQUEST_TIMEOUT_S = 30.0


def _record(view: dict[str, Any]) -> JobRecord:
    progress = view["progress"]
    return JobRecord(
        id=view["id"],
        kind=view["kind"],
        state=view["state"],
        total=progress["total"],
        done=progress["done"],
        failed=progress["failed"],
        created_at=view["created_at"],
        started_at=view["started_at"],
        finished_at=view["finished_at"],
        error=view["error"],
        options=view["options"],
    )


class ApiClient:
    """Talks to ``batchgrid serve``; mirrors the parts of JobStore the CLI reads."""

    def __init__(self, base_url: str, *, token: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--api {base_url}: give the producer's URL with its scheme, "
                f"e.g. http://{base_url}"
            )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=REQUEST_TIMEOUT_S
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BrokerUnavailableError(
                f"the producer at {self._http.base_url} does not answer ({exc})"
            ) from exc
        if response.status_code == 404:
            raise JobNotFoundError(_detail(response))
        if response.status_code in (401, 403):
            raise AuthError(
                f"the producer refused the request ({_detail(response)}); "
                "set BATCHGRID_API_TOKEN"
            )
        if response.status_code == 409:
            raise JobStateError(_detail(response))
        if 400 <= response.status_code < 500:
            raise InputError(_detail(response))
        if response.status_code >= 500:
            raise BrokerUnavailableError(
                f"the producer failed with {response.status_code}: {_detail(response)}"
            )
        return response.json()

    def submit(self, request: ImagesRequest | TablesRequest) -> str:
        """Submit a job; returns its id."""
        kind = "images" if isinstance(request, ImagesRequest) else "tables"
        view = self._call(
            "POST", f"/jobs/{kind}", json=request.model_dump(exclude_none=True)
        )
        job_id: str = view["id"]
        return job_id

    def get(self, job_id: str) -> JobRecord:
        return _record(self._call("GET", f"/jobs/{job_id}"))

    def items(self, job_id: str) -> dict[str, dict[str, Any]]:
        items: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = self._call(
                "GET", f"/jobs/{job_id}/result", params={"offset": offset}
            )
            items.update(page.get("items", {}))
            if len(page.get("items", {})) < page.get("limit", 1):
                return items
            offset += page["limit"]

    def result(self, job_id: str) -> dict[str, Any] | None:
        try:
            page = self._call("GET", f"/jobs/{job_id}/result", params={"limit": 1})
        except JobStateError:
            return None  # not finished yet
        result: dict[str, Any] | None = page.get("result")
        return result

    def cancel(self, job_id: str) -> JobRecord:
        return _record(self._call("DELETE", f"/jobs/{job_id}"))


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list):  # FastAPI's shape: the field at fault, then why
        return "; ".join(
            f"{'.'.join(str(p) for p in entry.get('loc', [])[1:])}: {entry.get('msg')}"
            for entry in detail
        )
    return str(detail)
