#!/usr/bin/env python3
"""Write workload.jsonl: the chat requests the smollm2-cpu benchmark sends.

Each line is an OpenAI /v1/chat/completions body. The mix is what a small instruct model
on a CPU is asked in practice: one-line questions, coding help, rewriting, summaries of a
pasted paragraph or two, and lists, with output budgets from 16 to 256 tokens. Most
requests are greedy (temperature 0) so runs are comparable; a few sample.

Run from anywhere: python3 make_workload.py  (writes workload.jsonl next to this script).
"""

import json
import pathlib

MODEL = "smollm2-cpu"

TERSE = "You are a concise assistant. Answer in as few words as possible."
CODER = "You are a senior software engineer. Give correct, idiomatic code with a short explanation."
EDITOR = "You are a careful copy editor. Keep the author's meaning and tone."

# (system prompt or None, user message, max_tokens, temperature)
REQUESTS = [
    (None, "What is the capital of Australia?", 16, 0.0),
    (TERSE, "How many bytes are in a kibibyte?", 16, 0.0),
    (None, "Give me three tips for sleeping better.", 96, 0.0),
    (None, "Translate 'Where is the train station?' into Spanish and French.", 48, 0.0),
    (CODER, "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation.", 192, 0.0),
    (None, "Explain the difference between a process and a thread.", 160, 0.0),
    (TERSE, "What year did the Berlin Wall fall?", 16, 0.0),
    (
        EDITOR,
        "Rewrite this so it sounds more professional: hey team, the deploy broke again last night "
        "cause somebody pushed without running tests. can we please not do that, its the third time this month.",
        96,
        0.0,
    ),
    (
        None,
        "Summarize the following in two sentences:\n\n"
        "The city council voted on Tuesday to extend the bike lane network by 40 kilometres over the next "
        "three years. Supporters argued that the existing lanes had cut commuting times and reduced accidents "
        "on the busiest corridors, while opponents worried about the loss of parking spaces for small shops. "
        "The plan will be funded partly by a regional transport grant and partly by a small increase in "
        "parking fees in the city centre. Construction of the first segment, along the river, is expected to "
        "begin in the spring.",
        80,
        0.0,
    ),
    (CODER, "In Rust, how do I read a file line by line and count the lines that contain the word 'error'?", 224, 0.0),
    (None, "List five common houseplants that tolerate low light.", 96, 0.0),
    (None, "What does HTTP status code 429 mean, and how should a client react to it?", 128, 0.0),
    (TERSE, "Convert 72 degrees Fahrenheit to Celsius.", 24, 0.0),
    (None, "Write a haiku about autumn rain.", 48, 0.7),
    (
        CODER,
        "This SQL query is slow on a table with ten million rows. How can I speed it up?\n\n"
        "SELECT customer_id, COUNT(*) FROM orders WHERE created_at >= '2024-01-01' GROUP BY customer_id "
        "ORDER BY COUNT(*) DESC LIMIT 20;",
        224,
        0.0,
    ),
    (None, "Is a tomato a fruit or a vegetable? Explain briefly.", 64, 0.0),
    (None, "Give me a packing list for a three-day hiking trip in the mountains.", 192, 0.0),
    (
        EDITOR,
        "Fix the grammar and spelling: Their going to announce the results tomorow, but noone knows weather "
        "the new policy will effect the budget.",
        64,
        0.0,
    ),
    (None, "What is the difference between weather and climate?", 112, 0.0),
    (CODER, "Explain what this JavaScript does: const unique = [...new Set(items.map(i => i.id))];", 128, 0.0),
    (TERSE, "Name the largest planet in the solar system.", 16, 0.0),
    (
        None,
        "Summarize this email in one sentence and list any action items:\n\n"
        "Hi all, thanks for joining yesterday's planning meeting. To recap: we agreed to move the product "
        "launch from March 3 to March 17 so that the support team has time to finish the new help articles. "
        "Priya will update the launch checklist by Friday, and Marco will confirm the new date with the "
        "marketing agency. Please send me any remaining blockers before Wednesday so I can include them in "
        "the status report. Best, Dana",
        128,
        0.0,
    ),
    (None, "Suggest four names for a coffee shop that also sells used books.", 64, 0.8),
    (CODER, "Write a bash one-liner that finds the ten largest files under the current directory.", 96, 0.0),
    (None, "Why is the sky blue?", 128, 0.0),
    (None, "What are the main causes of inflation? Keep it short.", 128, 0.0),
    (
        None,
        "Turn these notes into a short paragraph for a newsletter: new office opens June 2; on Harbour Street; "
        "bigger kitchen; bike parking for 30; open house with snacks on June 5 from 4 to 6 pm; everyone welcome.",
        128,
        0.0,
    ),
    (TERSE, "What is the square root of 144?", 16, 0.0),
    (CODER, "What is the difference between git merge and git rebase, and when should I use each?", 256, 0.0),
    (None, "Give me a simple recipe for a vegetarian lentil soup.", 256, 0.0),
    (None, "Explain recursion to a ten-year-old.", 96, 0.0),
    (
        EDITOR,
        "Make this paragraph shorter without losing information:\n\n"
        "In order to be able to make sure that all of the members of the team are able to access the shared "
        "documents, we would like to kindly ask each and every one of you to please make sure that you have "
        "logged in to the new document portal at least one time before the end of the current week.",
        64,
        0.0,
    ),
    (None, "List the planets of the solar system in order from the Sun.", 64, 0.0),
    (CODER, "Write a Python class for a stack with push, pop, peek and is_empty methods.", 224, 0.0),
    (TERSE, "Who wrote 'Pride and Prejudice'?", 16, 0.0),
    (None, "What should I consider when choosing between a laptop and a desktop for software development?", 192, 0.0),
    (
        None,
        "Read this review and tell me whether it is positive, negative or mixed, with one reason:\n\n"
        "The headphones sound great and the noise cancelling works well on the train, but the ear cushions "
        "started peeling after two months and the app keeps asking me to log in again.",
        48,
        0.0,
    ),
    (None, "Write a short, friendly message declining an invitation to a birthday party.", 80, 0.7),
    (CODER, "How do I reverse a linked list in place? Show it in C.", 256, 0.0),
    (None, "What are three good questions to ask at the end of a job interview?", 96, 0.0),
]


def body(system, user, max_tokens, temperature):
    """One OpenAI chat completion request body."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user})
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}


def main():
    out = pathlib.Path(__file__).with_name("workload.jsonl")
    lines = [json.dumps(body(*r), ensure_ascii=False) for r in REQUESTS]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} requests to {out.name}")


if __name__ == "__main__":
    main()
