"""Agents that think with an LLM and talk to each other end-to-end encrypted.

A user asks an analyst agent a question; the analyst drafts an answer with an LLM and sends it to a
critic agent, which reviews it (with the LLM too) and sends answer and review back to the user.
Every hop is an encrypted agentmesh message; only the LLM calls leave the process.

Any OpenAI-compatible API works (OpenAI, a local server, a proxy). Configure with
  AGENTMESH_LLM_BASE_URL or OPENAI_BASE_URL   e.g. http://localhost:11434/v1
  AGENTMESH_LLM_API_KEY  or OPENAI_API_KEY
  AGENTMESH_LLM_MODEL    or OPENAI_MODEL      (default gpt-4o-mini)
With none of them set (or with --offline) a clearly labelled local stand-in answers instead, so the
example runs offline. Only the standard library is used (urllib), no openai package.

Run: python examples/04_llm_agents.py [--offline] [--question "..."]
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from agentmesh import Agent, LocalHub

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
STAND_IN = "[offline stand-in]"


def llm_config(offline=False):
    """(base_url, api_key, model), or None when no LLM is configured."""
    env = os.environ
    base = env.get("AGENTMESH_LLM_BASE_URL") or env.get("OPENAI_BASE_URL")
    key = env.get("AGENTMESH_LLM_API_KEY") or env.get("OPENAI_API_KEY")
    model = env.get("AGENTMESH_LLM_MODEL") or env.get("OPENAI_MODEL") or DEFAULT_MODEL
    if offline or not (base or key):
        return None
    return (base or DEFAULT_BASE_URL).rstrip("/"), key, model


def chat_completion(config, system, prompt, timeout=60.0):
    """One POST to {base_url}/chat/completions; returns the reply text."""
    base_url, api_key, model = config
    body = json.dumps(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0.2,
        }
    ).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read().decode("utf-8"))
    return answer["choices"][0]["message"]["content"].strip()


def stand_in(role, prompt):
    """A deterministic local stand-in, clearly labelled as such."""
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    if role == "analyst":
        return (
            f"{STAND_IN} Draft answer to {first_line!r}: end-to-end encryption means only "
            "the two agents hold the keys, so the hub in between routes ciphertext it "
            "cannot read or forge."
        )
    return (
        f"{STAND_IN} Review: the draft is correct and short; it could add that every "
        "message is signed, so the receiver knows who sent it."
    )


class Brain:
    """Calls the configured LLM, or the stand-in; falls back (loudly) if the call fails."""

    def __init__(self, config):
        self.config = config

    def think(self, role, system, prompt):
        if self.config is None:
            return stand_in(role, prompt)
        try:
            return chat_completion(self.config, system, prompt)
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
            print(f"LLM call failed ({exc}); using the stand-in", file=sys.stderr)
            return stand_in(role, prompt)


def main():
    parser = argparse.ArgumentParser(description="LLM agents over agentmesh")
    parser.add_argument("--offline", action="store_true", help="use the local stand-in")
    parser.add_argument("--question", default="Why can't the hub read messages between two agents?")
    args = parser.parse_args()

    config = llm_config(args.offline)
    brain = Brain(config)
    if config is None:
        print(f"No LLM configured: answers come from a local stand-in, marked {STAND_IN}.\n")
    else:
        print(f"Using model {config[2]!r} at {config[0]}\n")

    hub = LocalHub()
    user = Agent("user", hub=hub)
    analyst = Agent("analyst", hub=hub)
    critic = Agent("critic", hub=hub)

    @analyst.on_message
    def analyse(msg):
        draft = brain.think(
            "analyst",
            "You are a concise technical analyst. Answer in at most three sentences.",
            msg.text,
        )
        analyst.send("critic", text=draft, type="draft", question=msg.text, asked_by=msg.sender)

    @critic.on_message
    def review(msg):
        verdict = brain.think(
            "critic",
            "You are a careful reviewer. In at most two sentences, say what is right or missing.",
            f"Question: {msg.payload['question']}\nDraft answer: {msg.text}",
        )
        critic.send(msg.payload["asked_by"], text=verdict, type="review", draft=msg.text)

    answers = []

    @user.on_message
    def receive(msg):
        answers.append(msg)

    print(f"user -> analyst: {args.question}")
    user.send("analyst", text=args.question, type="question")

    for msg in answers:
        print(f"\nanalyst's draft (via {msg.sender}):\n  {msg.payload['draft']}")
        print(f"\ncritic's review:\n  {msg.text}")
    print(
        f"\n{hub.message_count()} encrypted envelopes crossed the hub; it could read none of them."
    )
    for agent in (user, analyst, critic):
        agent.close()
    return 0 if answers else 1


if __name__ == "__main__":
    sys.exit(main())
