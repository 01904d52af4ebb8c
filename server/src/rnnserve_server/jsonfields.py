"""Typed access to parsed JSON objects whose errors name the field's whole path
(``manifest.output.labels: expected a list of strings``): what the model package's
manifest is read with."""

from __future__ import annotations

import re
from typing import Any


class FieldReader:
    """Typed access to one JSON object, with error messages that name the field path;
    every error is an ``error`` (the caller's own ValueError subclass)."""

    def __init__(self, data: Any, where: str, error: type[ValueError] = ValueError) -> None:
        self.error = error
        if not isinstance(data, dict):
            raise error(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.where = where
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            raise self.error(f"{self.where}.{key}: missing")
        return self.data[key]

    def child(self, key: str) -> FieldReader:
        return FieldReader(self._get(key), f"{self.where}.{key}", self.error)

    def item(self, value: Any, where: str) -> FieldReader:
        """A reader of ``value`` (e.g. an element of a list), named ``where``, raising
        the same error."""
        return FieldReader(value, where, self.error)

    def string(
        self, key: str, *, allow_empty: bool = False, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = self._get(key)
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self.error(f"{self.where}.{key} = {value!r}: expected a non-empty string")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(f"{self.where}.{key} = {value!r}: must match {pattern.pattern}")
        return value

    def optional_number(self, key: str, *, low: float) -> float | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise self.error(
                f"{self.where}.{key} = {value!r}: expected null or a number >= {low:g}"
            )
        return float(value)

    def array(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self.error(f"{self.where}.{key}: expected a list")
        return value

    def optional_string(self, key: str) -> str | None:
        if self.data.get(key) is None:
            self.seen.add(key)
            return None
        return self.string(key)

    def string_list(self, key: str, *, required: bool = True) -> list[str]:
        if not required and key not in self.data:
            self.seen.add(key)
            return []
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(f"{self.where}.{key}: expected a list of strings")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(
                f"{self.where}.{key} = {value!r}: expected an integer in {low}..{high}"
            )
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self.error(f"{self.where}.{key} = {value!r}: expected true or false")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self._get(key)
        if value not in allowed:
            raise self.error(f"{self.where}.{key} = {value!r}: expected one of {allowed}")
        return str(value)

    def mapping(self, key: str, value_type: type | None = None) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self.error(f"{self.where}.{key}: expected a JSON object")
        if value_type is not None:
            for k, v in value.items():
                ok = (
                    isinstance(v, (int, float))
                    if value_type is float
                    else isinstance(v, value_type)
                )
                if not ok or isinstance(v, bool):
                    raise self.error(
                        f"{self.where}.{key}.{k} = {v!r}: expected {value_type.__name__}"
                    )
        return value

    def no_extra(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise self.error(f"{self.where}: unknown field(s) {extra}")
