"""Prints the field types of KServe's resources as JSON, read from the KServe Python SDK wheel.

No package ships the KServe CRDs' schemas, but the SDK's generated models (kserve/models/*.py) name every
field of every type with its JSON key (attribute_map), its type (openapi_types: 'str', 'int', 'list[V1Container]',
'V1beta1PredictorSpec', ...) and whether it is required (the setter refuses None). The models are read as source
(ast), not imported: the SDK's own dependencies are not installed.

    python deploy/tools/kserve_types.py kserve-0.21.0-py3-none-any.whl > kserve-types.json
"""

import ast
import json
import re
import sys
import zipfile

REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def literal_dict(class_node, name):
    for node in class_node.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def main(wheel):
    types = {}
    with zipfile.ZipFile(wheel) as archive:
        for path in sorted(archive.namelist()):
            if not re.fullmatch(r"kserve/models/v\d\w*\.py", path):
                continue
            source = archive.read(path).decode()
            for node in ast.parse(source).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                openapi_types = literal_dict(node, "openapi_types")
                attribute_map = literal_dict(node, "attribute_map")
                if openapi_types is None or attribute_map is None:
                    continue
                required = {attribute_map[a] for a in REQUIRED.findall(source) if a in attribute_map}
                types[node.name] = {
                    "fields": {attribute_map[a]: t for a, t in openapi_types.items()},
                    "required": sorted(required),
                }
    if "V1beta1InferenceService" not in types:
        sys.exit(f"{wheel}: no V1beta1InferenceService model found")
    json.dump(types, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
