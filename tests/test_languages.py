"""Java and Go as well as Python: each file read in its own language (strings, comments, concepts), and the
cross-language comparison of the keys a concept selects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codecircuits import memories as mem
from codecircuits.errors import InputError
from codecircuits.memories import catalogues, crosslang, languages
from codecircuits.memories import concepts as cc

JAVA = '''package demo;

import java.util.List;

public class Greeter {
    // greet says "hello" to each name
    public static void greet(List<String> names) throws Exception {
        for (String n : names) {
            if (n == null) {
                throw new IllegalArgumentException("no // name");
            }
            System.out.println("hello " + n);
        }
    }
}
'''

GO = '''package demo

import (
	"fmt"
	"os"
)

// Greet says "hello" to each name
func Greet(names []string) error {
	for _, n := range names {
		if n == "" {
			return fmt.Errorf("no // name")
		}
		fmt.Fprintln(os.Stdout, `raw // string`)
	}
	return nil
}
'''


def _token_of(text, offsets, needle, nth=0):
    """Index of the token that covers the nth occurrence of ``needle``."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    return int(np.nonzero((offsets[:, 0] <= at) & (offsets[:, 1] > at))[0][0])


def test_language_of_paths_and_catalogues_share_names():
    assert languages.language_of("a/B.java") == "java" and languages.language_of("x.go") == "go"
    assert languages.language_of("text0") == "python"
    assert languages.corpus_language(["a.go", "b.go", "c.py"]) == "go"
    assert {"kw_import", "comment", "string", "exceptions", "loops", "api_re"} <= set(catalogues.SHARED)
    assert all(c.language == "java" for c in cc.catalogue(language="java"))
    assert cc.catalogue("semantic", language="go") and not {c.name for c in cc.catalogue("semantic", "go")} & {"async"}
    with pytest.raises(InputError, match="language must be one of"):
        cc.catalogue(language="rust")


@pytest.mark.parametrize("lang,text", [("java", JAVA), ("go", GO)])
def test_strings_and_comments_are_read_in_the_file_language(tiny, lang, text):
    enc = tiny.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(enc["offset_mapping"]).reshape(-1, 2)
    cat = cc.catalogue(language=lang)
    names = [c.name for c in cat]
    m = cc.doc_masks(text, offsets, cat, force_token=True, language=lang)
    com, strg, imp = (m[names.index(n)] for n in ("comment", "string", "kw_import"))
    # the comment's quoted "hello" is comment, not string; the string's "//" is string, not comment
    assert com[_token_of(text, offsets, "hello")] and not strg[_token_of(text, offsets, "hello")]
    assert strg[_token_of(text, offsets, "// name")] and not com[_token_of(text, offsets, "// name")]
    assert imp[_token_of(text, offsets, "import")]
    # the same text read as Python finds no Java/Go concept, and Python's '#'-comments are not Java's
    assert not cc.doc_masks(text, offsets, cat, force_token=True, language="python").any()
    ex = m[names.index("exceptions")]
    assert ex[_token_of(text, offsets, "Exception" if lang == "java" else "Errorf")]


def test_token_masks_read_each_document_in_its_language(tiny):
    from codecircuits.corpus import CodeFile

    ch = mem.chunk_corpus(tiny, [CodeFile("A.java", JAVA), CodeFile("b.go", GO)], window=64)
    n_java = len(ch.ids[0])
    java = cc.token_masks(ch, [cc.get("comment", cc.catalogue(language="java"))]).mask[0]
    go = cc.token_masks(ch, [cc.get("comment", cc.catalogue(language="go"))]).mask[0]
    assert java[:n_java].any() and not java[n_java:].any()
    assert go[n_java:].any() and not go[:n_java].any()
    # no concepts given: the catalogue of the corpus's main language (one file each: the first, Java)
    assert cc.token_masks(ch).concepts == cc.catalogue(language=languages.corpus_language(ch.names))


def _scores(sel_by_concept, layers=(0, 1), d=50):
    cs = tuple(c for c in cc.CATALOGUE if c.name in sel_by_concept)
    s = torch.zeros(len(cs), len(layers), d)
    for i, c in enumerate(cs):
        s[i][sel_by_concept[c.name]] = 0.9
    return cc.ConceptScores(
        scores=s, base_rate=torch.full((len(cs),), 0.05), concepts=cs, layers=layers,
        n_triggers=torch.full((len(layers), d), 5),
    )


def test_cross_language_overlap_against_layer_matched_chance():
    gen = torch.Generator().manual_seed(0)
    same = torch.zeros(2, 50, dtype=torch.bool)
    same[1, :10] = True
    other = torch.zeros(2, 50, dtype=torch.bool)
    other[1, torch.randperm(50, generator=gen)[:10]] = True
    py = _scores({"comment": same, "loops": same})
    java = _scores({"comment": same, "loops": other})
    res = crosslang.compare_languages({"python": py, "java": java}, n_draws=300)
    by = {o.concept: o for o in res.overlaps}
    assert by["comment"].jaccard["python/java"] == 1.0 and by["comment"].above_chance("python/java")
    assert by["comment"].in_all == 10 and by["comment"].n_keys == {"python": 10, "java": 10}
    # ten keys in the same layer out of fifty: chance overlap is about 10 / 90, and a random set is not above it
    assert 0.05 < by["loops"].chance_mean["python/java"] < 0.2
    assert by["loops"].jaccard["python/java"] <= by["loops"].chance_high["python/java"] + 0.25
    df = res.to_dataframe()
    assert list(df.columns[:3]) == ["concept", "pair", "keys_a"] and len(df) == 2
    assert res.top(1)["concept"].tolist() == ["comment"] and "<svg" in res.plot().to_svg()
    assert res.summary()["concept_pairs"] == 2
    with pytest.raises(InputError, match="at least two"):
        crosslang.compare_languages({"python": py})
    with pytest.raises(InputError, match="different keys"):
        crosslang.compare_languages({"python": py, "go": _scores({"comment": same}, layers=(0, 2))})


def test_cross_language_claim_follows_the_overlap_and_its_interval():
    """Concepts that select the same keys in both languages make the claim 'reproduced', with the mean Jaccard's
    interval above the chance mean's; concepts on unrelated keys do not."""
    from codecircuits.studies.languages import LanguagesStudy

    gen = torch.Generator().manual_seed(1)
    names = [c.name for c in cc.CATALOGUE][:6]

    def keys(random_keys):
        out = {}
        for i, n in enumerate(names):
            sel = torch.zeros(2, 50, dtype=torch.bool)
            sel[1, torch.randperm(50, generator=gen)[:8] if random_keys else slice(i * 8, i * 8 + 8)] = True
            out[n] = sel
        return out

    same = _scores(keys(False))
    for other, want in ((same, "reproduced"), (_scores(keys(True)), "not reproduced")):
        cmp = crosslang.compare_languages({"python": same, "java": other}, n_draws=200)
        st = LanguagesStudy(model="m", languages=("python", "java"), corpora={}, tokens={}, distributions={},
                            rq1={}, comparison=cmp)
        claim = [c for c in _cross_claims(st)][0]
        assert claim.verdict == want, (claim.verdict, claim.detail)
        assert claim.evidence.n == 6 and (claim.evidence.low > claim.control.high) == (want == "reproduced")


def _cross_claims(st):
    # the study's claims without the per-language RQ1 rows (this fake study has none)
    import dataclasses

    return [c for c in type(st).claims(dataclasses.replace(st, languages=())) if "every language" in c.claim]


def test_scans_in_two_languages_compare_end_to_end(tiny):
    from codecircuits.corpus import CodeFile

    out = {}
    for lang, text, name in (("java", JAVA, "A.java"), ("go", GO, "a.go")):
        ch = mem.chunk_corpus(tiny, [CodeFile(name, text * 2)], window=32)
        scan = mem.scan(tiny, ch, k=3, progress=False)
        out[lang] = cc.key_scores(scan, ch, cc.catalogue(language=lang))
    res = crosslang.compare_languages(out, tau=0.3, min_lift=1.0, n_draws=20)
    assert {o.concept for o in res.overlaps} == {c.name for c in catalogues.JAVA} & {c.name for c in catalogues.GO}
    assert {"block_open", "concurrency"} <= {o.concept for o in res.overlaps}
    assert all(0 <= o.jaccard["java/go"] <= 1 for o in res.overlaps)


def test_three_language_study_and_command(tiny_dirs, tmp_path, capsys):
    """The study on three tiny corpora (one directory per language), run from the command line, resumable from its
    per-language checkpoints, with a report that passes the browser check."""
    import json

    from browser import check_study_report

    from codecircuits.cli import main

    dirs = {}
    for lang, name, text in (("python", "a.py", "import os\n\ndef f(x):\n    return x + 1\n"),
                             ("java", "A.java", JAVA), ("go", "a.go", GO)):
        d = tmp_path / lang
        d.mkdir()
        for i in range(3):
            (d / f"{i}{name}").write_text(text * 2)
        dirs[lang] = str(d) if lang == "python" else f"{lang}:{d}"
    out = tmp_path / "rep"
    args = ["languages", "--model", str(tiny_dirs["llama"]), "--out", str(out), "--corpora",
            ",".join(dirs.values()), "--max-tokens", "400", "--window", "32", "--top-k", "3", "--tau", "0.3",
            "--min-lift", "1.0", "--n-draws", "20", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "java:" in printed and "cross-language:" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["languages"] == ["python", "java", "go"]
    assert {c["verdict"] for c in data["claims"]} <= {"reproduced", "partly", "not reproduced"}
    scans = sorted((out / "scans").glob("*.safetensors"))
    assert len(scans) == 3 and all(p.name.endswith("_sample0.safetensors") for p in scans)  # the uniform sample
    assert data["config"]["order"] == "sample"
    check_study_report(out / "report.html", out / "results.json", "languages-tiny.png", require=("table",),
                       screenshot=False)
    assert main(args) == 0  # the second run resumes every scan from its checkpoint
    assert json.loads((out / "results.json").read_text())["cross_language"] == data["cross_language"]
