"""Prompt configs: brace expansion, the original YAML format, shipped configs, clear errors."""

from pathlib import Path

import pytest

from reprolib.prompts import ConfigError, Pair, PromptConfig, expand_braces, load_config, shipped_configs

REFERENCE = Path("/work/shared/reference/attribute-control/people_age.yaml")
SHAPES_WORDS = {"a", "and", "small", "big", "red", "green", "blue", "yellow", "circle", "square", "triangle"}


def test_brace_expansion_is_the_cartesian_product_in_order():
    assert expand_braces("{a,b} c {d,e}") == ["a c d", "a c e", "b c d", "b c e"]


def test_brace_expansion_empty_alternatives_and_whitespace():
    assert expand_braces("{,a photo of} a {,big}") == ["a", "a big", "a photo of a", "a photo of a big"]
    assert expand_braces("  two   words ") == ["two words"]
    assert expand_braces("x{a,{b,c}d}y") == ["xay", "xbdy", "xcdy"]  # nested groups


@pytest.mark.parametrize("bad", ["{a,b", "a}b", "{a,{b}"])
def test_brace_expansion_rejects_unbalanced(bad):
    with pytest.raises(ConfigError, match="unbalanced"):
        expand_braces(bad)


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference attribute-control config not present")
def test_reference_people_age_parses():
    cfg = load_config(REFERENCE)
    assert cfg.tag == "people/age"
    assert len(cfg.pairs) == 6
    assert cfg.pairs[0] == Pair("man", "old man", "young man", "man")
    assert len(cfg.prefixes) == 4 * 2 * 11
    assert len(set(cfg.prefixes)) == len(cfg.prefixes)
    assert "a photo of a beautiful asian" in cfg.prefixes and "a" in cfg.prefixes
    assert all(p == " ".join(p.split()) for p in cfg.prefixes)
    assert len(cfg.combinations()) == 6 * 88
    assert PromptConfig.join("a photo of a", " old  man ") == "a photo of a old man"


@pytest.mark.parametrize("name", ["people/age", "shapes/size", "shapes/colour"])
def test_shipped_configs_load(name):
    assert name in shipped_configs()
    cfg = load_config(name)
    assert cfg.pairs and cfg.prefixes
    for _prefix, pair in cfg.combinations():
        for text, pattern in ((pair.positive, pair.patterns[0]), (pair.negative, pair.patterns[1])):
            assert pattern.lower() in text.lower()  # the subject is in the pair, not only the prefix
    assert load_config(f"{name}.yaml").tag == cfg.tag


@pytest.mark.parametrize("name", ["shapes/size", "shapes/colour"])
def test_shapes_configs_stay_in_the_worlds_vocabulary(name):
    cfg = load_config(name)
    for prefix, pair in cfg.combinations():
        for text in (pair.positive, pair.negative):
            words = PromptConfig.join(prefix, text).replace(",", " ").split()
            assert set(words) <= SHAPES_WORDS, (prefix, text)


def test_shapes_size_contrasts_only_the_size_word():
    for pair in load_config("shapes/size").pairs:
        assert pair.positive.split()[0] == "big" and pair.negative.split()[0] == "small"
        assert pair.positive.split()[1:] == pair.negative.split()[1:] == pair.target.split()


def test_dict_and_list_prefixes():
    cfg = load_config(
        {
            "tag": "t",
            "prompts": [
                dict(prompt_target="cat", prompt_positive="fat cat", prompt_negative="thin cat", pattern_target="cat")
            ],
            "prefixes": ["a", "  a  photo of a "],
        }
    )
    assert cfg.prefixes == ["a", "a photo of a"]
    assert load_config(cfg) is cfg
    no_prefix = load_config(
        {"tag": "t", "prompts": [dict(prompt_target="x", prompt_positive="y", prompt_negative="z", pattern_target="x")]}
    )
    assert no_prefix.prefixes == [""]


def test_unknown_name_lists_shipped():
    with pytest.raises(ConfigError, match="shapes/size"):
        load_config("shapes/nonexistent")


def test_missing_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("tag: x\nprompts:\n- {prompt_target: a, prompt_positive: b, prompt_negative: c}\n")
    with pytest.raises(ConfigError, match="pattern_target"):
        load_config(f)
    with pytest.raises(ConfigError, match="'prompts'"):
        load_config({"tag": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(
            {
                "tag": "x",
                "prompts": [
                    dict(
                        prompt_target="a",
                        prompt_positive="b",
                        prompt_negative="c",
                        pattern_target="a",
                        pattern_postive="b",
                    )
                ],
            }
        )


def test_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("tag: [unclosed\nprompts: :\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_bad_interpolation():
    with pytest.raises(ConfigError, match="combinations"):
        load_config(
            {
                "tag": "x",
                "prompts": [dict(prompt_target="a", prompt_positive="b", prompt_negative="c", pattern_target="a")],
                "prefixes": "${oc.env:HOME}",
            }
        )
