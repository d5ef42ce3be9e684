"""Writes arithmetic-word-problems.jsonl: a labelled workload of a different kind than
support-and-facts.jsonl (one- and two-step arithmetic instead of intents and facts), to measure
whether a confidence threshold chosen on one workload carries over to the other.

Deterministic: `python3 tests/workloads/make_arithmetic.py` rewrites the same file.
"""

import json
import random
from pathlib import Path

NAMES = ["Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Ivy", "Omar", "Lena", "Raj", "Eva", "Max"]
THINGS = ["apple", "book", "pencil", "stamp", "marble", "card", "cookie", "sticker", "coin", "shell"]
INSTRUCTION = "Solve this problem. Answer with the number only."


def problems(rng):
    while True:
        name, other = rng.sample(NAMES, 2)
        thing = rng.choice(THINGS)
        kind = rng.choice(["add", "subtract", "multiply", "two-step", "older"])
        if kind == "add":
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            yield kind, f"{name} has {a} {thing}s and gets {b} more. How many {thing}s does {name} have now?", a + b
        elif kind == "subtract":
            a = rng.randint(10, 40)
            b = rng.randint(1, a - 1)
            yield kind, f"{name} had {a} {thing}s and gave {b} of them away. How many {thing}s are left?", a - b
        elif kind == "multiply":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            yield kind, f"{name} buys {a} boxes with {b} {thing}s in each box. How many {thing}s is that in total?", a * b
        elif kind == "two-step":
            a, b = rng.randint(5, 20), rng.randint(2, 15)
            c = rng.randint(1, a + b - 1)
            yield kind, f"{name} has {a} {thing}s, buys {b} more and then gives {c} to {other}. How many {thing}s does {name} have now?", a + b - c
        else:
            a, b = rng.randint(5, 40), rng.randint(1, 15)
            yield kind, f"{name} is {a} years old. {other} is {b} years older than {name}. How old is {other}?", a + b


def main():
    rng = random.Random(20261207)
    out = Path(__file__).with_name("arithmetic-word-problems.jsonl")
    lines = []
    for i, (kind, problem, answer) in zip(range(160), problems(rng)):
        item = {"id": f"arith-{i:03d}", "kind": kind, "prompt": f"{INSTRUCTION}\nProblem: {problem}", "expected": str(answer)}
        lines.append(json.dumps(item))
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
