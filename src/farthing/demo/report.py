"""What the demo saw: every number here comes from what ran."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CardLine", "Check", "DemoReport", "Message", "Purchase"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Purchase:
    method: str
    path: str
    price_micros: int
    charged_micros: int
    up_front: bool
    sealed: bool
    ok: bool
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One HTTP message of the first purchase, as it crossed the loopback: the request line
    or status line, and the headers (name, value) in the order sent."""

    start: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CardLine:
    label: str
    method: str
    currency: str
    before_micros: int
    after_micros: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True, kw_only=True)
class DemoReport:
    workdir: str
    card_device: str = ""
    purchases: list[Purchase] = field(default_factory=list)
    exchange: list[Message] = field(default_factory=list)  # the first purchase, 402 and all
    cards: list[CardLine] = field(default_factory=list)
    verify_ms: dict[str, float] = field(default_factory=dict)
    accounts: dict[str, tuple[int, int]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name=name, ok=ok, detail=detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)
