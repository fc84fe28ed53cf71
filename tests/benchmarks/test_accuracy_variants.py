"""benchmarks/accuracy.py's runs per residual gate and flow network, and their pairs."""

from accuracy import _baselines, _flow_tag, _variant_opts, _variants


def test_gate_and_flow_variants_apply_to_the_methods_that_have_them():
    assert _variants("rfcn", ["scheduled"], ["zero"]) == ["rfcn"]
    assert _variants("dff", ["scheduled"], ["zero", "raft"]) == ["dff/zero", "dff/raft"]
    assert _variants("impression", ["channel", "paper"], ["oracle"]) == [
        "impression/channel/oracle",
        "impression/paper/oracle",
    ]
    assert _variant_opts("impression/paper/zero") == [
        "MODEL.VIDEO.IDENTITY_INIT", False, "MODEL.FLOW.NAME", "ZeroFlow",
    ]  # fmt: skip
    assert _flow_tag("impression/scheduled") == "flownet" and _flow_tag("stmn_rfcn") is None


def test_a_gated_run_names_its_configs_gate_in_its_options():
    # The cache key holds the options: a run made under another default gate is not reused.
    assert _variant_opts("stmn_rfcn") == _variant_opts("stmn_rfcn/scheduled")
    assert _variant_opts("stmn_rfcn") == ["MODEL.VIDEO.GATE.KIND", "scheduled"]
    assert _variant_opts("dff/zero") == ["MODEL.FLOW.NAME", "ZeroFlow"]  # no gate
    assert _variant_opts("rfcn") == []


def test_a_variant_is_paired_with_its_baselines_in_the_same_gate_and_flow():
    runs = ["rfcn", "dff/raft", "dff/zero", "ssn_rfcn"]
    assert _baselines("impression/scheduled/raft", runs) == ["rfcn", "dff/raft"]
    assert _baselines("impression/channel", ["rfcn", "dff/zero"]) == ["rfcn"]  # DFF: zero flow only
    # SSN has no gate: STSN with any gate is paired with the one SSN.
    assert _baselines("stsn_rfcn/scheduled", runs) == ["rfcn", "ssn_rfcn"]
    assert _baselines("stsn_rfcn/channel", runs) == ["rfcn", "ssn_rfcn"]


def test_ssn_has_no_gate_variants():
    # Its block starts as the identity by construction: a gate alternative is the same model.
    assert _variants("ssn_rfcn", ["channel", "position", "paper"], []) == ["ssn_rfcn"]
    assert _variant_opts("ssn_rfcn") == []
