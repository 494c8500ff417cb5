"""Test infrastructure of the e2e suite: a real control plane (cluster), a kubelet stand-in that runs pods'
containers as local processes (kubelet), S3 on moto (s3) and readable waits (waiting)."""
