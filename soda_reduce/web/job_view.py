"""The job page's account of a reduction: datasets with the quality their associations
reached, the provenance of every step (what it made, from which inputs) and the products,
each told apart by step, task and group keys (night, binning, filter...).

Pure: built from the stored job (its plan and results) and the manifests of its steps,
which the caller reads in a thread (`runtime/product_view.py`). The association wording
is the text plan's (`reduction/report.py`); only the links are added here. Long input
lists are cut at `INPUTS_SHOWN` (a master flat may combine hundreds of frames).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soda_reduce.reduction.plan import LEVEL_WORDS, PlanInput, PlanJob, ReductionPlan
from soda_reduce.reduction.report import association_view
from soda_reduce.runtime.jobs import JobRecord
from soda_reduce.runtime.product_view import StepManifest
from soda_reduce.web.context import product_id
from soda_reduce.web.page_urls import (
    datalink_url,
    product_file_url,
    product_page_url,
    raw_page_url,
)
from soda_reduce.web.static_calibrations import static_url

INPUTS_SHOWN = 30  # raw inputs listed per step
PREVIEW = "PREVIEW"


def stored_plan(job: JobRecord) -> ReductionPlan | None:
    """The job's plan, typed; None before planning (or for a plan of an older schema)."""
    if not job.plan:
        return None
    try:
        return ReductionPlan.from_dict(job.plan)
    except (ValueError, KeyError, TypeError):
        return None


class JobView:
    """Links and rows for one job's page (``root``: the prefix of every link)."""

    def __init__(
        self,
        job: JobRecord,
        plan: ReductionPlan | None,
        manifests: Mapping[str, StepManifest],
        root: str,
        authority: str,
    ) -> None:
        self.job = job
        self.plan = plan
        self.manifests = manifests
        self.root = root
        self.authority = authority
        self.jobs = {j.job_id: j for j in plan.jobs} if plan else {}
        self.paths = {  # raw file id -> its path in the archive, from the plan's inputs
            i.file_id: i.path
            for j in (plan.jobs if plan else ())
            for i in j.inputs
            if i.file_id and i.path
        }
        self.status = {s.get("job_id"): s for s in job.steps}

    # -------------------------------------------------------------- links

    def raw_link(self, file_id: str) -> dict[str, Any]:
        path = self.paths.get(file_id)
        static = static_url(self.root, file_id)
        if path is not None:
            return {"name": path, "url": raw_page_url(self.root, path)}
        if static is not None:
            return {"name": file_id, "url": static}
        return {"name": file_id.rsplit("?", 1)[-1], "url": None}

    def main_file(self, step_key: str | None) -> str | None:
        """The file a step is named by: its main product (else its first that is no preview)."""
        manifest = self.manifests.get(step_key or "")
        if manifest is None:
            return None
        files = [f for f in manifest.files if f.preview_of is None]
        chosen = next((f for f in files if f.main), files[0] if files else None)
        return chosen.file if chosen else None

    def step_link(self, job_id: str) -> dict[str, Any]:
        """An upstream step: its label, its row below, and its main product's page."""
        plan_job = self.jobs.get(job_id)
        key = plan_job.step_key if plan_job else None
        main = self.main_file(key)
        return {
            "name": plan_job.label if plan_job else job_id,
            "anchor": f"step-{job_id}",
            "url": product_page_url(self.root, key, main) if key and main else None,
            "file": main,
        }

    def chosen_link(self, ref: str, label: str) -> dict[str, Any]:
        if ref in self.jobs:
            return self.step_link(ref)
        return {**self.raw_link(ref), "name": self.paths.get(ref) or label}

    # -------------------------------------------------------------- sections

    def associations(self, plan_job: PlanJob) -> list[dict[str, Any]]:
        rows = []
        for result in plan_job.associations:
            view = association_view(result, self.jobs)
            rows.append(
                {
                    "category": view.category,
                    "status": view.status,
                    "level": view.level,
                    "quality": view.quality if view.status == "matched" else view.summary,
                    "chosen": [self.chosen_link(ref, label) for ref, label in view.chosen],
                    "fallback": view.level is not None and view.level > 0,
                }
            )
        return rows

    def datasets(self) -> list[dict[str, Any]]:
        if self.plan is None:
            return []
        shown = []
        for dataset in self.plan.datasets:
            target = self.jobs.get(dataset.target_job)
            inputs = list(dataset.main_inputs)
            shown.append(
                {
                    "label": dataset.label,
                    "complete": dataset.complete,
                    "level": dataset.quality_level,
                    "level_words": LEVEL_WORDS.get(dataset.quality_level, ""),
                    "reasons": list(dataset.reasons),
                    "target": self.step_link(dataset.target_job) if target else None,
                    "associations": self.associations(target) if target else [],
                    "inputs": [self.raw_link(i) for i in inputs[:INPUTS_SHOWN]],
                    "more_inputs": max(0, len(inputs) - INPUTS_SHOWN),
                }
            )
        return shown

    def provenance(self) -> list[dict[str, Any]]:
        """Every step of the plan, upstream first: its inputs and what it made."""
        if self.plan is None:
            return []
        return [self._step(j) for j in self.plan.jobs]

    def _step(self, plan_job: PlanJob) -> dict[str, Any]:
        raw = [i for i in plan_job.inputs if i.file_id and i.role == "main"]
        upstream = [self._input(i) for i in plan_job.inputs if i.job]
        others = [self._input(i) for i in plan_job.inputs if i.file_id and i.role != "main"]
        manifest = self.manifests.get(plan_job.step_key or "")
        made = []
        for item in manifest.files if manifest else ():
            if item.preview_of is not None:
                continue
            key = plan_job.step_key or ""
            made.append(
                {
                    "file": item.file,
                    "category": item.category,
                    "main": item.main,
                    "url": product_page_url(self.root, key, item.file),
                }
            )
        state = self.status.get(plan_job.job_id, {})
        associations = self.associations(plan_job)
        quality = {a["category"]: a["quality"] for a in associations if a["status"] == "matched"}
        calibrations = [{**c, "quality": quality.get(c["category"], "")} for c in upstream + others]
        return {
            "id": plan_job.job_id,
            "anchor": f"step-{plan_job.job_id}",
            "task": plan_job.task,
            "label": plan_job.label,
            "group": group_keys(plan_job),
            "step_key": plan_job.step_key or "",
            "recipe": f"{plan_job.recipe} v{plan_job.recipe_version}",
            "status": state.get("status") or ("planned" if plan_job.complete else "incomplete"),
            "reasons": list(plan_job.reasons),
            "inputs": [self.raw_link(i.file_id or "") for i in raw[:INPUTS_SHOWN]],
            "more_inputs": max(0, len(raw) - INPUTS_SHOWN),
            "calibrations": calibrations,
            # what was not found or not used (the matched ones are in ``calibrations``)
            "unmatched": [a for a in associations if a["status"] != "matched"],
            "made": made,
        }

    def _input(self, item: PlanInput) -> dict[str, Any]:
        link = self.step_link(item.job) if item.job else self.raw_link(item.file_id or "")
        return {"category": item.category, "role": item.role, **link}

    def products(self) -> list[dict[str, Any]]:
        """The job's results, each with what tells it apart and where to read about it."""
        rows = []
        for result in self.job.results:
            key, name = result["step_key"], result["file"]
            plan_job = self.jobs.get(result.get("plan_job", "")) or self._job_of_key(key)
            manifest = self.manifests.get(key)
            item = manifest.file(name) if manifest else None
            rows.append(
                {
                    "file": name,
                    "category": result.get("category", ""),
                    "task": result.get("task", ""),
                    "step": plan_job.label if plan_job else "",
                    "step_id": plan_job.job_id if plan_job else "",
                    "step_key": key,
                    "group": group_keys(plan_job) if plan_job else [],
                    "qc": list(item.qc) if item else [],
                    "size": result.get("size"),
                    "target": bool(result.get("target")),
                    "main": bool(result.get("main")),
                    "preview": result.get("category") == PREVIEW
                    and result.get("content_type") == "image/png",
                    "url": product_file_url(self.root, key, name),
                    "page": product_page_url(self.root, key, name),
                    "datalink": datalink_url(self.root, product_id(self.authority, key, name)),
                }
            )
        return rows

    def _job_of_key(self, step_key: str) -> PlanJob | None:
        return next((j for j in self.jobs.values() if j.step_key == step_key), None)


def group_keys(plan_job: PlanJob) -> list[tuple[str, str]]:
    """The keys that made the step's group (NIGHT, BINNING, FILTER...), not its internal ID."""
    return [(str(k), str(v)) for k, v in plan_job.group.items() if k != "id"]
