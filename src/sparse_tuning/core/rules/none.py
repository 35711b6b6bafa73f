"""No reduction: every token in every block (the methods that keep every token)."""
from __future__ import annotations

from typing import Any, Optional

from ..reduction import Rule, register_rule


class EveryToken(Rule):
    name = "none"
    help = "every token in every block"

    def keeps_every_token(self, config: Any) -> bool:
        return True

    def describe(self, config: Any, blocks: Optional[tuple[int, ...]] = None) -> str:
        return "every token kept"


register_rule(EveryToken())
