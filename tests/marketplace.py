"""Marketplace-style checks of an exported JPEG, for tests (import as `from marketplace import ...`).

The checks live in `turncrop.stream.marketplace`, where `turncrop replay --check` uses them too.
"""
from __future__ import annotations

from turncrop.stream.marketplace import NEAR_WHITE, check_marketplace_jpeg

__all__ = ["NEAR_WHITE", "check_marketplace_jpeg"]
