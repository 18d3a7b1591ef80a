//go:build tools

// Package tools names the commands build.sh builds, so that go.mod and go.sum keep them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
