"""All the fakes in one import (kept for the tests that import them from here)."""

from tests.fakes.atlassian import FakeAtlassian
from tests.fakes.github import FakeGitHub
from tests.fakes.google import FakeGoogle
from tests.fakes.salesforce import FakeSalesforce

FAKES = {"github": FakeGitHub, "atlassian": FakeAtlassian, "salesforce": FakeSalesforce, "google": FakeGoogle}

__all__ = ["FAKES", "FakeAtlassian", "FakeGitHub", "FakeGoogle", "FakeSalesforce"]
