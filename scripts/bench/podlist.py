#!/usr/bin/env python3
"""Prints a PodList in the API server's JSON shape, padded with pods to about N bytes."""
import json
import sys


def pod(i):
    return {
        "metadata": {"name": f"web-{i:04d}", "namespace": "default", "uid": f"6f1b1a0e-0000-4000-8000-{i:012d}",
                     "resourceVersion": str(1000 + i), "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}],
                 "nodeName": "node-1", "restartPolicy": "Always"},
        "status": {"phase": "Running", "podIP": f"10.244.0.{i % 250 + 2}", "startTime": "2026-01-01T00:00:01Z"},
    }


def main():
    target = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    items = []
    while True:
        doc = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "2000"}, "items": items + [pod(len(items))]}
        if len(json.dumps(doc)) > target:
            break
        items.append(pod(len(items)))
    doc = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "2000"}, "items": items}
    text = json.dumps(doc)
    # Pad the list metadata so the body is close to the target size.
    doc["metadata"]["continue"] = "x" * max(0, target - len(text) - len(',"continue": ""'))
    print(json.dumps(doc), end="")


if __name__ == "__main__":
    main()
