"""JSON schemas for the custom resources in deploy/k8s, which kubernetes-validate has no
schema for: KEDA's ScaledObject (keda.sh/v1alpha1, from KEDA 2's
config/crd/bases/keda.sh_scaledobjects.yaml) and the Prometheus Operator's ServiceMonitor
(monitoring.coreos.com/v1, from its monitoring.coreos.com_servicemonitors.yaml).

Each covers the fields the manifests use, with the CRD's types, required fields, enums and
ranges, and refuses any other field: a structural CRD schema prunes unknown fields, so a
misspelt one would be dropped without a word by the API server."""

from __future__ import annotations

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# metadata as kustomize renders it: a DNS-1123 name, labels and annotations
METADATA = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
NUMBER_STRING = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}

# autoscaling/v2 HPAScalingRules, as the ScaledObject CRD embeds them
HPA_SCALING_RULES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "value", "periodSeconds"],
            "properties": {
                "type": {"enum": ["Pods", "Percent"]},
                "value": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
            }}},
    },
}
# The prometheus scaler's trigger metadata (KEDA docs, scalers/prometheus); the CRD holds
# trigger metadata as a map of strings, so numbers are strings too.
PROMETHEUS_METADATA = {
    "type": "object", "additionalProperties": False, "required": ["serverAddress", "query", "threshold"],
    "properties": {
        "serverAddress": {"type": "string", "pattern": r"^https?://[^/\s]+"},
        "query": {"type": "string", "minLength": 1},
        "threshold": NUMBER_STRING,
        "activationThreshold": NUMBER_STRING,
        "namespace": {"type": "string"},
        "customHeaders": {"type": "string"},
        "queryParameters": {"type": "string"},
        "ignoreNullValues": {"enum": ["true", "false"]},
        "unsafeSsl": {"enum": ["true", "false"]},
        "timeout": NUMBER_STRING,
    },
}
TRIGGER = {
    "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "metadata": STRING_MAP,
        "authenticationRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                              "properties": {"name": {"type": "string"}, "kind": {"type": "string"}}},
    },
    "if": {"properties": {"type": {"const": "prometheus"}}},
    "then": {"properties": {"metadata": PROMETHEUS_METADATA}},
}
SCALED_OBJECT = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": METADATA,
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                   "apiVersion": {"type": "string"}, "envSourceContainerName": {"type": "string"}}},
                "pollingInterval": INT32,
                "cooldownPeriod": INT32,
                "initialCooldownPeriod": INT32,
                "idleReplicaCount": INT32,
                "minReplicaCount": INT32,
                "maxReplicaCount": INT32,
                "fallback": {"type": "object", "additionalProperties": False,
                             "required": ["failureThreshold", "replicas"],
                             "properties": {"failureThreshold": INT32, "replicas": INT32}},
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object", "additionalProperties": False,
                                             "properties": {"scaleUp": HPA_SCALING_RULES,
                                                            "scaleDown": HPA_SCALING_RULES}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": TRIGGER},
            },
        },
    },
}

# monitoring.coreos.com/v1 Duration
DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
SERVICE_MONITOR = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "honorLabels": {"type": "boolean"},
                    }}},
            },
        },
    },
}

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}
