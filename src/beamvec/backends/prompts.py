"""gemini-embedding-2's task prompts: the task goes into the text, not ``task_type``.

Google's embeddings guide (https://ai.google.dev/gemini-api/docs/embeddings,
"Task types" for gemini-embedding-2) says the model takes no ``task_type``
and documents how to write the task into the input instead:

* asymmetric retrieval, queries:  ``task: search result | query: {content}``
  (question answering: ``task: question answering | query: …``; fact
  checking: ``task: fact checking | query: …``; code retrieval:
  ``task: code retrieval | query: …``);
* the documents they search:      ``title: {title} | text: {content}``,
  with ``title: none`` when there is no title;
* symmetric tasks, the same for every input: ``task: classification |
  query: …``, ``task: clustering | query: …``, ``task: sentence similarity
  | query: …``.

beamvec maps ``--task-type`` to these (``RETRIEVAL_QUERY`` is "search
result"), sends no ``task_type`` for such models, and records the template in
the footer and the configuration fingerprint: a change of format is a new
configuration, never mixed with vectors made under another.
"""

from __future__ import annotations

from dataclasses import dataclass

from beamvec.backends import tokens

#: Task type -> the task's name in the query template.
QUERY_TASKS: dict[str, str] = {
    "RETRIEVAL_QUERY": "search result",
    "QUESTION_ANSWERING": "question answering",
    "FACT_VERIFICATION": "fact checking",
    "CODE_RETRIEVAL_QUERY": "code retrieval",
    "CLASSIFICATION": "classification",
    "CLUSTERING": "clustering",
    "SEMANTIC_SIMILARITY": "sentence similarity",
}
DOCUMENT_TASK = "RETRIEVAL_DOCUMENT"
DOCUMENT_TEMPLATE = "title: {title} | text: {content}"
NO_TITLE = "none"
#: Tokens (upper bound) a document's title may take; longer titles are cut,
#: so that the text's own budget is known before any title is seen.
TITLE_TOKENS = 128
#: Model ids (and their ``-…`` variants) that take the task in the text.
PROMPTED_MODELS = ("gemini-embedding-2",)


def takes_prompt(model: str) -> bool:
    """Whether ``model`` wants its task written into the text (no ``task_type``)."""
    mid = model.rsplit("/", 1)[-1]
    return any(mid == name or mid.startswith((name + "-", name + "@")) for name in PROMPTED_MODELS)


@dataclass(frozen=True)
class PromptFormat:
    """How one task's texts are written for the model."""

    template: str  # "{content}" and, for documents, "{title}"

    def apply(self, text: str, title: str | None = None) -> str:
        if "{title}" not in self.template:
            return self.template.format(content=text)
        kept = tokens.cut(title, TITLE_TOKENS) if title else ""
        return self.template.format(title=kept or NO_TITLE, content=text)

    def overhead(self) -> int:
        """Tokens (upper bound) the template adds to a text, title included."""
        bare = self.template.format(title=NO_TITLE, content="")
        return tokens.upper_bound(bare) + (TITLE_TOKENS if "{title}" in self.template else 0)


def prompt_format(model: str, task_type: str | None) -> PromptFormat | None:
    """The documented template for ``task_type`` on ``model``; None when the
    model takes ``task_type`` itself, or when no task is asked (the text is
    sent as it is)."""
    if not takes_prompt(model) or task_type is None:
        return None
    if task_type == DOCUMENT_TASK:
        return PromptFormat(DOCUMENT_TEMPLATE)
    return PromptFormat(f"task: {QUERY_TASKS[task_type]} | query: {{content}}")
