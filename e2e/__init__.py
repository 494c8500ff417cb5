"""End-to-end tests on a real Kubernetes control plane (a package so that `e2e.support` and `tests.support.s3util`
import from the repository root)."""
