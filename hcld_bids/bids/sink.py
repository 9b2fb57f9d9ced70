"""The one sink of hcld-bids: niworkflows' DerivativesDataSink, writing atomically into OUTPUT_DIR.

niworkflows builds the file name from the source T1w's entities plus ``space``/``desc``/``suffix``/...,
fixes the NIfTI header (units, qform/sform codes), coerces the data type (``data_dtype``; masks become
uint8), compresses (``compress``) and writes a JSON sidecar from the remaining keyword inputs and
``meta_dict``. This subclass

- writes at the root of OUTPUT_DIR (``out_path_base = ""``);
- lets niworkflows write into a private staging directory inside OUTPUT_DIR (``.tmp-sub-<label>-<random>``, same file
  system), then renames each file to its final name: the sidecar first, the image last, so an image under
  its final name always has its complete sidecar, and a killed job leaves no partial file there;
- adds ``Sources`` (as BIDS URIs: ``bids:raw:...`` for files of BIDS_DIR, ``bids::...`` for files of
  OUTPUT_DIR) from the ``sources`` and ``bids_dir`` inputs, and a ``Provenance`` object from
  ``provenance``.

Several participant jobs may write into one OUTPUT_DIR at once: they share no temporary names.

Example (inside a workflow)::

    ds_harmonized = pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), bids_dir=str(bids_dir),
                            space="MNI152NLin6Asym", desc="harmonized", suffix="T1w",
                            compress=True, SkullStripped=True),
        name="ds_harmonized")
    # connect: in_file, source_file (the raw T1w), sources, provenance
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from nipype.interfaces.base import Directory, InputMultiObject, Str, isdefined, traits
from niworkflows.interfaces.bids import DerivativesDataSink as _NiworkflowsSink
from niworkflows.interfaces.bids import _DerivativesDataSinkInputSpec

from .atomic import TMP_PREFIX
from .derivatives import bids_uri


def staging_prefix(source_file) -> str:
    """``.tmp-sub-<label>-`` for a source file of a subject (``.tmp-`` otherwise): a killed job's leftover
    staging directory can be told apart from the ones of jobs running on other subjects."""
    sources = source_file if isinstance(source_file, (list, tuple)) else [source_file]
    for source in sources:
        if isdefined(source) and (match := re.search(r"(?:^|_|/)(sub-[a-zA-Z0-9]+)_", str(source))):
            return f"{TMP_PREFIX}{match[1]}-"
    return TMP_PREFIX


class _DerivativesDataSinkInputSpec(_DerivativesDataSinkInputSpec):
    bids_dir = Directory(desc="root of the input BIDS dataset (for the BIDS URIs of Sources)")
    sources = InputMultiObject(
        Str, desc="files this derivative was computed from (paths in BIDS_DIR/OUTPUT_DIR, or BIDS URIs)"
    )
    provenance = traits.Dict(Str, traits.Any, desc="written as the 'Provenance' object of the sidecar")


class DerivativesDataSink(_NiworkflowsSink):
    """niworkflows' DerivativesDataSink with atomic writes, Sources as BIDS URIs and a Provenance block."""

    input_spec = _DerivativesDataSinkInputSpec
    out_path_base = ""

    def _extra_metadata(self, output_dir: Path) -> dict:
        extra = {}
        if isdefined(self.inputs.sources) and self.inputs.sources:
            bids_dir = self.inputs.bids_dir if isdefined(self.inputs.bids_dir) else None
            if bids_dir is None and any(not str(s).startswith("bids:") for s in self.inputs.sources):
                raise ValueError("DerivativesDataSink: 'sources' given as paths need 'bids_dir'")
            extra["Sources"] = [bids_uri(s, bids_dir, output_dir) for s in self.inputs.sources]
        if isdefined(self.inputs.provenance) and self.inputs.provenance:
            extra["Provenance"] = dict(self.inputs.provenance)
        return extra

    def _run_interface(self, runtime):
        original = self.inputs.base_directory
        output_dir = Path(original if isdefined(original) else runtime.cwd).absolute()
        output_dir.mkdir(parents=True, exist_ok=True)
        self._metadata.update(self._extra_metadata(output_dir))

        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(self.inputs.source_file), dir=output_dir))
        self.inputs.base_directory = str(staging)
        try:
            runtime = super()._run_interface(runtime)
            sidecar = self._results.get("out_meta")
            if sidecar:
                self._results["out_meta"] = str(self._publish(Path(sidecar), staging, output_dir))
            self._results["out_file"] = [
                str(self._publish(Path(written), staging, output_dir)) for written in self._results["out_file"]
            ]
        finally:
            self.inputs.base_directory = original
            shutil.rmtree(staging, ignore_errors=True)
        return runtime

    @staticmethod
    def _publish(written: Path, staging: Path, output_dir: Path) -> Path:
        final = output_dir / written.relative_to(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, final)
        return final
