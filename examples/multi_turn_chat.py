"""Multi-turn chat with roles: lp.system, lp.user and lp.assistant in a loop over user turns.

The program writes roles, not prompt text: the backend renders them with the model's own turn
template (Gemma's `<start_of_turn>user ... <end_of_turn>`; Gemma has no system role, so the
system message becomes a user turn of its own). Every answer is generated inside an assistant
turn and lands in the history, so later turns can refer back ("there", "it").

Gemma 3 270M is a small *base* model: it chats poorly and rarely ends its turn by itself (it
tends to trail off into stray tokens). So the conversation opens with two example exchanges, and
each answer is held to a single sentence by a regex (a capital letter, no line break, one
closing punctuation mark) and bounded by max_tokens. Expect short, plausible answers, not a
knowledgeable assistant. Run with:

    .venv/bin/python examples/multi_turn_chat.py
"""

from __future__ import annotations

import lmprog as lp

# One sentence: generation ends at its closing punctuation mark. (Keep such regexes free of
# large bounded repeats like {1,100}: each repeat multiplies the states of the token index.)
ONE_SENTENCE = r"[A-Z][^\n.!?]*[.!?]"

USER_TURNS = [
    "What is the capital of Spain?",
    "What language do people speak there?",
    "What is the weather like there in summer?",
]


@lp.function(temperature=0)  # greedy: the same conversation on every run
def chat(s, turns):
    s += lp.system("You are a helpful assistant. Answer in one short sentence.")
    # Two example exchanges show the base model what an answer looks like.
    s += lp.user("What is the capital of France?")
    s += lp.assistant("The capital of France is Paris.")
    s += lp.user("How many people live there?")
    s += lp.assistant("About two million people live in Paris.")
    for i, turn in enumerate(turns):
        s += lp.user(turn)
        s += lp.assistant(lp.gen(f"answer_{i}", max_tokens=48, regex=ONE_SENTENCE))


def main() -> None:
    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    state = chat.run(USER_TURNS)
    for i, turn in enumerate(USER_TURNS):
        print(f"user:      {turn}")
        print(f"assistant: {state[f'answer_{i}']}")
    # The history as OpenAI-style messages: what you would send to a chat API.
    print("\nmessages():")
    for message in state.messages():
        print(f"  {message['role']:>9}: {message['content']}")


if __name__ == "__main__":
    main()
