"""Request and response models: the OpenAPI schema documents the API through these."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, conlist

#: A voxel index [i, j, k] of the session image.
Voxel = conlist(int, min_length=3, max_length=3)
MAX_POINTS = 10000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClickRequest(_Strict):
    model: str = Field(..., description="model name, from /info/")
    foreground: list[Voxel] = Field(default_factory=list, max_length=MAX_POINTS, description="new [i, j, k] clicks")
    background: list[Voxel] = Field(default_factory=list, max_length=MAX_POINTS)
    object_id: str = Field("1", description="which object of the session the clicks refine")
    slice_axis: Optional[int] = Field(None, ge=0, le=2, description="2D models: 0 = i, 1 = j, 2 = k")


class ExtremePointsRequest(_Strict):
    model: str
    points: list[Voxel] = Field(..., min_length=1, max_length=MAX_POINTS)
    object_id: str = "1"


class AutoSegmentRequest(_Strict):
    model: str


class ObjectRequest(_Strict):
    object_id: str = "1"


class SessionCreated(BaseModel):
    session_id: str
    session_info: dict[str, Any]


class ErrorAnswer(BaseModel):
    detail: str = Field(..., description="what went wrong and what to do")
    code: str = Field(..., description="machine-readable error code, e.g. session_expired")
    request_id: Optional[str] = None


class JobStart(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Optional[str] = Field(None, description="name of the published model (default: the bundle's)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="bundle config overrides, e.g. {'optimizer#lr': 1e-4}")
    images: Optional[list[str]] = Field(None, description="datastore image ids (default: every image with a label)")
    tag: Optional[str] = Field(None, description="label tag to train on (default: final)")
    device: Optional[str] = Field(None, description="auto, cpu, cuda or cuda:N")
    resume: Optional[str] = Field(None, description="id of a stopped job to continue instead of starting one")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorAnswer} for s in (400, 401, 404, 409, 413, 415, 422, 440, 503)
}
