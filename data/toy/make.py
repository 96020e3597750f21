"""A toy data-to-text task, written for this project (not taken from any dataset): a weather
record in, one sentence out. It shows the JSONL task format (data/jsonl.py) and is small and
regular enough that a tiny GPT-2 learns it on a CPU in a minute (README, "Your own data").

    python data/toy/make.py      # writes train.jsonl (160 lines), dev.jsonl and test.jsonl (20)

tiny-gpt2/config.json is a GPT-2 shape small enough to learn it from scratch in a minute on a
CPU (2 layers, width 64, 128 positions; `train.py --model data/toy/tiny-gpt2 --random-init
--method full`: no weights, nothing downloaded).

The rows come from the lists below with a fixed seed, so this writes the same files every time.
Every record has a city, a sky, a high temperature and a wind; train.jsonl gives each record one
of three sentence templates, dev and test give all three ("targets"), as E2E gives an MR
several references.
"""

import json
import os
import random

CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Rome", "Quito", "Seoul", "Perth", "Dakar",
          "Riga", "Hanoi"]
SKIES = {"sun": "sunny", "clouds": "cloudy", "rain": "rainy", "snow": "snowy", "fog": "foggy"}
WINDS = ["calm", "light", "strong"]
TEMPLATES = ["{city} will be {sky} today, with a high of {high} degrees and {wind} wind.",
             "Expect a {sky} day in {city}: {wind} wind and a high of {high} degrees.",
             "In {city} today: {sky}, {wind} wind, up to {high} degrees."]
HERE = os.path.dirname(os.path.abspath(__file__))


def records(n: int, rng: random.Random) -> list[dict]:
    """n distinct weather records."""
    seen, out = set(), []
    while len(out) < n:
        record = (rng.choice(CITIES), rng.choice(list(SKIES)), rng.randint(-5, 35),
                  rng.choice(WINDS))
        if record not in seen:
            seen.add(record)
            out.append(dict(zip(("city", "sky", "high", "wind"), record)))
    return out


def context(r: dict) -> str:
    return f"city : {r['city']} | sky : {r['sky']} | high : {r['high']} | wind : {r['wind']}"


def sentence(r: dict, template: str) -> str:
    return template.format(city=r["city"], sky=SKIES[r["sky"]], high=r["high"], wind=r["wind"])


def main(folder: str = HERE):
    rng = random.Random(2021)
    rows = records(200, rng)
    train, dev, test = rows[:160], rows[160:180], rows[180:]
    files = {
        "train.jsonl": [{"context": context(r), "target": sentence(r, TEMPLATES[i % 3])}
                        for i, r in enumerate(train)],
        "dev.jsonl": [{"context": context(r), "targets": [sentence(r, t) for t in TEMPLATES]}
                      for r in dev],
        "test.jsonl": [{"context": context(r), "targets": [sentence(r, t) for t in TEMPLATES]}
                       for r in test]}
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        print(f"wrote {os.path.join(folder, name)}: {len(lines)} lines")


if __name__ == "__main__":
    main()
