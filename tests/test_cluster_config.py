"""``[cluster]``: the roles a process can take, and what each of them needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from egressd.cli import main
from egressd.config import parse_config
from egressd.errors import ConfigError

KAFKA = """
[[sources.kafka]]
bootstrap_servers = ["127.0.0.1:9092"]
topics = ["flows"]
"""


def test_all_in_one_is_the_default() -> None:
    config = parse_config("")
    assert config.cluster.role == "all-in-one"
    assert config.cluster.batch_offsets == 5000


def test_detect_needs_a_state_directory() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(KAFKA + '[cluster]\nrole = "detect"\n', "x.toml")
    assert "cluster.state_directory" in str(error.value)
    assert "required" in str(error.value)


@pytest.mark.parametrize(
    "sources",
    [
        "",
        KAFKA + KAFKA,
        KAFKA + '[[sources.netflow]]\nlisten = "127.0.0.1:2055"\n',
    ],
)
def test_roles_read_exactly_one_kafka_source(sources: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(sources + '[cluster]\nrole = "ingest"\n', "x.toml")
    assert "exactly one [[sources.kafka]]" in str(error.value)


def test_ingest_must_not_read_its_own_partials() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(KAFKA + '[cluster]\nrole = "ingest"\npartials_topic = "flows"\n')
    assert "cluster.partials_topic" in str(error.value)


def test_an_unknown_role_names_the_choices() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config('[cluster]\nrole = "both"\n')
    assert "cluster.role" in str(error.value)
    assert "ingest" in str(error.value)


def test_check_config_says_which_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "egressd.toml"
    path.write_text(
        KAFKA + f'[cluster]\nrole = "detect"\nstate_directory = "{tmp_path / "parts"}"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "role detect: partials from egressd-partials in group egressd-detect" in out


def test_detect_may_keep_its_state_in_object_storage() -> None:
    config = parse_config(
        KAFKA + '[cluster]\nrole = "detect"\nstate_url = "s3://bucket/egressd"\n'
        's3_endpoint = "http://127.0.0.1:9000"\n'
    )
    assert config.cluster.state_url == "s3://bucket/egressd"
    assert config.cluster.s3_region == "us-east-1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('state_url = "https://bucket/x"', "is not an s3://bucket/prefix URL"),
        ('state_url = "s3://b"\nstate_directory = "/tmp/x"', "exclude each other"),
    ],
)
def test_bad_object_storage_settings(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(KAFKA + f'[cluster]\nrole = "detect"\n{extra}\n')
    assert "cluster.state_url" in str(error.value)
    assert message in str(error.value)


def test_the_example_in_docs_scaling_is_a_valid_configuration() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text()
    block, transactions = re.findall(r"```toml\n(.*?)```", text, re.S)
    config = parse_config(block, "docs/scaling.md")
    assert config.cluster.role == "ingest"
    assert config.sources.kafka[0].topics == ("flows",)
    assert not config.cluster.transactions
    # The transactions section's keys, in the same [cluster] table.
    keys = transactions.replace("[cluster]\n", "")
    config = parse_config(block.replace("[cluster]\n", "[cluster]\n" + keys), "docs/scaling.md")
    assert config.cluster.transactions and config.cluster.transactional_id == "ingest-1"


@pytest.mark.parametrize(
    ("role", "extra", "message"),
    [
        ("ingest", "transactions = true", "cluster.transactional_id: is required"),
        ("all-in-one", "transactions = true", "cluster.transactions: applies to"),
        ("ingest", 'transactions = "yes"', "cluster.transactions: expected true or false"),
    ],
)
def test_bad_transaction_settings(role: str, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(KAFKA + f'[cluster]\nrole = "{role}"\n{extra}\n')
    assert message in str(error.value)
