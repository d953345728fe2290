"""
Synthetic English-like corpus for tests (deterministic for a seed).

The text has real structure a small model can learn, so loss curves in tests mean
something: a few hundred words in grammatical templates, per-document topics (each
topic prefers its own nouns and verbs), per-document invented names that recur
inside the document (in-context copying), morphology (plurals, -ing, -ed, -ly),
numbers, dialogue, and markdown headings/lists. Document lengths vary from one
sentence to several paragraphs.

    from tests.datagen import generate_documents, write_corpus
    docs = generate_documents(1000, seed=0)
    write_corpus(tmp_path / "corpus", n_docs=8000, seed=0)   # .jsonl shards + a few .txt/.md
"""

import json
import random
from pathlib import Path

# ---------------------------------------------------------------------------
# Vocabulary (a few hundred words)
# ---------------------------------------------------------------------------

TOPICS = {
    "sea": dict(
        nouns="ship sailor harbor wave storm island captain anchor sail net fish gull lighthouse tide shore rope deck compass map whale".split(),
        verbs="sail row anchor drift steer fish swim dive signal chart".split(),
        adjs="salty stormy calm blue deep wet windy distant".split(),
    ),
    "farm": dict(
        nouns="farmer field barn cow horse sheep tractor wheat corn fence orchard apple goat hen egg plough harvest well meadow dog".split(),
        verbs="plant harvest milk feed plough water gather herd mend shear".split(),
        adjs="green golden muddy quiet ripe dusty early fertile".split(),
    ),
    "city": dict(
        nouns="street tower market train bridge bakery office mayor crowd taxi square museum library station clerk shop window lamp bus park".split(),
        verbs="walk hurry trade build visit wait shout open close sell".split(),
        adjs="busy crowded bright noisy tall narrow modern old".split(),
    ),
    "forest": dict(
        nouns="tree fox owl path river bear deer cabin mushroom moss hunter trail wolf stream branch leaf squirrel hill cave fire".split(),
        verbs="hunt climb hide follow gather listen track camp wander rest".split(),
        adjs="dark green tall silent wild ancient cold hidden".split(),
    ),
    "science": dict(
        nouns="scientist experiment laboratory microscope sample theory result engine planet star telescope formula machine signal cell atom data model error measurement".split(),
        verbs="measure observe test record compute predict analyze build repeat publish".split(),
        adjs="careful precise strange small bright exact new complex".split(),
    ),
    "kitchen": dict(
        nouns="cook bread soup pot oven knife onion garlic butter flour sugar recipe table spoon kettle tea cheese pepper salt plate".split(),
        verbs="bake boil stir chop taste pour mix serve slice season".split(),
        adjs="warm sweet bitter fresh hot spicy golden thick".split(),
    ),
    "school": dict(
        nouns="teacher student lesson book pencil desk classroom exam question answer chalk board library story poem language number history friend bell".split(),
        verbs="learn teach read write ask answer study draw count explain".split(),
        adjs="clever curious patient difficult easy long short quiet".split(),
    ),
    "music": dict(
        nouns="singer song drum guitar piano violin band concert stage melody rhythm choir audience note ticket orchestra flute voice chord hall".split(),
        verbs="sing play dance practice listen perform tune clap record compose".split(),
        adjs="loud soft sweet lively slow gentle famous happy".split(),
    ),
}

COMMON_ADJS = "good bad big little young happy sad brave tired kind strange lucky".split()
ADVERBS = "quickly slowly quietly carefully suddenly happily often rarely always never soon later".split()
PREPS = "near behind under over beside across through into toward from".split()
TIMES = "In the morning|At noon|In the evening|At night|Every day|Once|Later|Then|After a while|Before dawn".split("|")
CONNECT = "and|but|so|because|while|until|although".split("|")
SAY = "said|asked|whispered|shouted|answered|replied".split("|")
FEEL = "happy|worried|surprised|tired|proud|afraid|calm|curious".split("|")
NUMWORDS = "two three four five six seven eight nine ten twelve twenty".split()
SYLLABLES = "ka lo mi ra ten vo shi ba del nor ith an el ur gra fen lis tor ma rin os bel cor dan".split()

IRREGULAR_PAST = {"swim": "swam", "dive": "dove", "build": "built", "sell": "sold", "hide": "hid",
                  "teach": "taught", "read": "read", "write": "wrote", "draw": "drew", "sing": "sang",
                  "hear": "heard", "buy": "bought", "feed": "fed", "mend": "mended"}


def _past(v):
    if v in IRREGULAR_PAST:
        return IRREGULAR_PAST[v]
    if v.endswith("e"):
        return v + "d"
    if v.endswith("y") and v[-2] not in "aeiou":
        return v[:-1] + "ied"
    return v + "ed"


def _ing(v):
    if v.endswith("e") and not v.endswith("ee"):
        return v[:-1] + "ing"
    return v + "ing"


def _plural(n):
    if n in ("sheep", "deer", "fish", "data", "bread", "corn", "wheat", "moss", "garlic", "butter",
             "flour", "sugar", "salt", "tea", "cheese", "pepper", "soup", "chalk", "history"):
        return n
    if n.endswith(("s", "sh", "ch", "x")):
        return n + "es"
    if n.endswith("y") and n[-2] not in "aeiou":
        return n[:-1] + "ies"
    if n.endswith("f"):
        return n[:-1] + "ves"
    if n == "wolf":
        return "wolves"
    return n + "s"


# ---------------------------------------------------------------------------
# Document generator
# ---------------------------------------------------------------------------

class _Doc:
    """State of one document: a topic, a cast of invented names, a place."""

    def __init__(self, rng):
        self.rng = rng
        self.topic = rng.choice(sorted(TOPICS))
        t = TOPICS[self.topic]
        # mostly the topic's words, sometimes another topic's (realistic mixing)
        other = TOPICS[rng.choice(sorted(TOPICS))]
        self.nouns, self.verbs, self.adjs = t["nouns"], t["verbs"], t["adjs"] + COMMON_ADJS
        self.other = other
        self.names = [self._name() for _ in range(rng.randint(1, 3))]
        self.place = self._name() + rng.choice(["ton", "ville", " Bay", " Hill", "ford", " Falls"])

    def _name(self):
        r = self.rng
        return "".join(r.choice(SYLLABLES) for _ in range(r.randint(2, 3))).capitalize()

    def noun(self):
        r = self.rng
        return r.choice(self.other["nouns"] if r.random() < 0.1 else self.nouns)

    def verb(self):
        return self.rng.choice(self.verbs)

    def np(self):
        """A noun phrase: 'the old ship', 'three sailors', 'Karo'."""
        r = self.rng
        x = r.random()
        if x < 0.15:
            return r.choice(self.names)
        if x < 0.3:
            return f"{r.choice(NUMWORDS)} {_plural(self.noun())}"
        adj = r.choice(self.adjs) + " " if r.random() < 0.5 else ""
        return f"the {adj}{self.noun()}"

    def sentence(self):
        r = self.rng
        k = r.randrange(9)
        if k == 0:
            s = f"{self.np()} {_past(self.verb())} {self.np()} {r.choice(PREPS)} {self.np()}"
        elif k == 1:
            s = f"{r.choice(TIMES)}, {self.np()} {_past(self.verb())} {r.choice(ADVERBS)}"
        elif k == 2:
            s = f"{r.choice(self.names)} was {_ing(self.verb())} {r.choice(PREPS)} {self.np()} in {self.place}"
        elif k == 3:
            s = (f"{self.np()} {_past(self.verb())} {self.np()}, {r.choice(CONNECT)} "
                 f"{self.np()} {_past(self.verb())} {r.choice(ADVERBS)}")
        elif k == 4:
            s = f"{self.np()} felt {r.choice(FEEL)} {r.choice(['because', 'when'])} {self.np()} {_past(self.verb())}"
        elif k == 5:
            n = r.randint(2, 99)
            s = f"There were {n} {_plural(self.noun())} {r.choice(PREPS)} {self.np()}"
        elif k == 6:
            name = r.choice(self.names)
            q = f"Where is the {self.noun()}?" if r.random() < 0.5 else f"We must {self.verb()} the {self.noun()}."
            return f"\"{q}\" {r.choice(SAY)} {name}."
        elif k == 7:
            s = f"the {self.noun()} of {self.place} is {r.choice(self.adjs)} and {r.choice(self.adjs)}"
        else:
            year = r.randint(1800, 2024)
            s = f"In {year}, {self.np()} {_past(self.verb())} {self.np()}"
        s = s[0].upper() + s[1:]
        return s + r.choice([".", ".", ".", "!"])

    def paragraph(self, n):
        return " ".join(self.sentence() for _ in range(n))

    def render(self):
        r = self.rng
        style = r.random()
        n_par = 1 if r.random() < 0.35 else r.randint(2, 6)
        pars = [self.paragraph(r.randint(1, 7)) for _ in range(n_par)]
        if style < 0.15:  # markdown article with a heading and a list
            items = "\n".join(f"- {r.choice(self.adjs)} {_plural(self.noun())}" for _ in range(r.randint(2, 5)))
            title = f"# The {self.noun().capitalize()} of {self.place}"
            return f"{title}\n\n{pars[0]}\n\n{items}\n\n" + "\n\n".join(pars[1:])
        if style < 0.25:  # a numbered record
            lines = [f"{i + 1}. {r.choice(self.names)} {_past(self.verb())} {r.randint(1, 99)} {_plural(self.noun())}."
                     for i in range(r.randint(2, 8))]
            return f"Notes from {self.place}:\n" + "\n".join(lines)
        return "\n\n".join(pars)


def generate_documents(n_docs, seed=0):
    """Return n_docs deterministic documents (list of str)."""
    rng = random.Random(seed)
    return [_Doc(rng).render() for _ in range(n_docs)]


def write_corpus(out_dir, n_docs=8000, seed=0, docs_per_file=2000):
    """Write a corpus folder for `prepare.py --source`: .jsonl files ({"text": ...} per line)
    plus a few documents as single .txt / .md files (one document per file). Returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = generate_documents(n_docs, seed=seed)
    singles, docs = docs[:6], docs[6:]
    for i, d in enumerate(singles):
        (out / f"doc_{i}.{'md' if i % 2 else 'txt'}").write_text(d, encoding="utf-8")
    for f, start in enumerate(range(0, len(docs), docs_per_file)):
        with open(out / f"part_{f:03d}.jsonl", "w", encoding="utf-8") as fh:
            for d in docs[start:start + docs_per_file]:
                fh.write(json.dumps({"text": d}) + "\n")
    return out


if __name__ == "__main__":
    for d in generate_documents(3, seed=1):
        print(d, "\n-----")
