"""The test suite: one package (``tests``), so that tests and benchmarks import shared helpers as
``tests.support...``; every test folder is a package too (pytest's default import mode)."""
