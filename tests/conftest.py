"""Test-session setup.

The engine tests plug a tiny model and dataset in through ``module:function`` names
(``test_engine_fixtures:tiny_model``), which end up in the checkpoints and run configs they evaluate and resume.
semiseg refuses such names when it reads them back from a file unless the user allows code
(``--allow-code`` / ``SEMISEG_ALLOW_CODE=1``); the test session is that user. Subprocesses inherit it.
Tests of the refusal itself remove the variable (``monkeypatch.delenv``) or pass an environment without it.
"""

import os

os.environ["SEMISEG_ALLOW_CODE"] = "1"
