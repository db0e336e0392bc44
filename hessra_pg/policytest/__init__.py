"""Policy tests for application teams: run statements "as" a role holding a
minted token, and check what they see and may do (``hessra-pg policy test
CASES.toml``, the ``policy_tester`` pytest fixture, the ``hessra_test`` SQL
helpers). docs/policy-tests.md."""

from .cases import Case, CaseFile, Expectation, load_cases, parse_cases
from .runner import CaseResult, RunReport, run_cases
from .session import TestKey, acting_as, register_test_key
from .tokens import MintedToken, TokenSpec, mint_test_token

__all__ = ["Case", "CaseFile", "CaseResult", "Expectation", "MintedToken", "RunReport", "TestKey", "TokenSpec",
           "acting_as", "load_cases", "mint_test_token", "parse_cases", "register_test_key", "run_cases"]
