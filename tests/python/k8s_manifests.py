"""Renders one kustomize overlay of deploy/kubernetes with `kubectl kustomize`
and validates every document: Kubernetes' own kinds against Kubernetes'
schemas (kubernetes-validate, strict: unknown fields fail), KEDA's kinds
against a KEDA schema with jsonschema. Prints the rendered documents as JSON
for tests/tests/it/kubernetes.rs, which runs the agent as they say.

usage: k8s_manifests.py OVERLAY_DIR KEDA_SCHEMA_DIR
KEDA_SCHEMA_DIR holds either KEDA's CRDs (keda.sh_<plural>.yaml, their
openAPIV3Schema is used) or, failing those, <Kind>.schema.json files.
"""

import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.37.0"
KEDA_MODELS = "2.16 (cloudcoil-models-keda)"
KEDA_PLURALS = {"ScaledObject": "scaledobjects", "TriggerAuthentication": "triggerauthentications"}


def keda_schema(directory, kind, api_version):
    crd_path = os.path.join(directory, f"keda.sh_{KEDA_PLURALS[kind]}.yaml")
    if os.path.exists(crd_path):
        with open(crd_path) as f:
            crd = yaml.safe_load(f)
        version = api_version.split("/")[1]
        for v in crd["spec"]["versions"]:
            if v["name"] == version:
                return f"KEDA CRD {os.path.basename(crd_path)}", strict(v["schema"]["openAPIV3Schema"])
        raise SystemExit(f"{crd_path} has no version {version}")
    path = os.path.join(directory, f"{kind}.schema.json")
    with open(path) as f:
        return os.path.basename(path), json.load(f)


def keda_models(doc, name, overlay):
    """Checks a KEDA resource against KEDA's own types as its CRDs define
    them (cloudcoil-models-keda, generated from the CRDs of a KEDA release):
    a wrong type fails validation, and a field the types do not know (a
    typo the API server would prune) is what a round trip drops."""
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, doc["kind"])
    try:
        obj = model.model_validate(doc)
    except Exception as err:  # pydantic.ValidationError
        raise SystemExit(f"{overlay}: {name} fails KEDA's types: {err}")
    back = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if back != doc:
        raise SystemExit(f"{overlay}: {name} has fields KEDA's types do not know: {json.dumps(doc)} became {json.dumps(back)}")
    return f"KEDA {KEDA_MODELS} types"


def strict(schema):
    """An OpenAPI schema with unknown properties refused (as the API server
    prunes them silently, a typo would otherwise pass)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def main():
    overlay, keda_dir = sys.argv[1], sys.argv[2]
    kubectl = os.path.join(os.path.dirname(sys.executable), "kubectl")
    rendered = subprocess.run([kubectl, "kustomize", overlay], check=True, capture_output=True, text=True).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    checked = []
    for doc in documents:
        kind, api_version = doc["kind"], doc["apiVersion"]
        name = f"{kind}/{doc['metadata']['name']}"
        if api_version.startswith("keda.sh/"):
            source, schema = keda_schema(keda_dir, kind, api_version)
            try:
                jsonschema.validate(doc, schema)
            except jsonschema.ValidationError as err:
                raise SystemExit(f"{overlay}: {name} fails {source}: {err.message} at {list(err.absolute_path)}")
            checked.append(f"{name} ({source}; {keda_models(doc, name, overlay)})")
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise SystemExit(f"{overlay}: {name} fails Kubernetes {KUBERNETES_VERSION}: {err.message} at {list(err.path)}")
            checked.append(f"{name} (Kubernetes {KUBERNETES_VERSION}, strict)")
    json.dump({"documents": documents, "checked": checked}, sys.stdout)


if __name__ == "__main__":
    main()
