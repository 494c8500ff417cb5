{{/*
Names and labels shared by every template. Cluster-scoped objects (ClusterRoles, ClusterRoleBindings) carry the
release namespace in their name: two releases of the same name in different namespaces must not collide.
*/}}

{{- define "flowdpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowdpo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's Deployment (and default ServiceAccount) name. */}}
{{- define "flowdpo.operatorName" -}}
{{- printf "%s-operator" (include "flowdpo.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of a cluster-scoped object: <namespace>-<fullname>-<suffix>. */}}
{{- define "flowdpo.clusterName" -}}
{{- printf "%s-%s-%s" .root.Release.Namespace (include "flowdpo.fullname" .root) .suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowdpo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the operator pod: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "flowdpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowdpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of this chart. (Run pods carry managed-by: flowdpo-operator instead of Helm.) */}}
{{- define "flowdpo.labels" -}}
helm.sh/chart: {{ include "flowdpo.chart" . }}
app.kubernetes.io/name: {{ include "flowdpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowdpo
{{- end }}

{{/* Labels of the operator's own objects (Deployment, pod, ServiceAccount, RBAC, metrics Service). */}}
{{- define "flowdpo.operatorLabels" -}}
{{ include "flowdpo.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The kopf peering object the operator joins: cluster-scoped (named like the other cluster-scoped objects,
with the release namespace) when it serves all namespaces, else one per watched namespace. */}}
{{- define "flowdpo.peeringName" -}}
{{- if .Values.watchNamespaces }}{{ include "flowdpo.fullname" . }}{{ else }}{{ include "flowdpo.clusterName" (dict "root" . "suffix" "peering") }}{{ end }}
{{- end }}

{{- define "flowdpo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowdpo.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false (the operator's identity)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flowdpo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's rules on the namespaced resources: exactly what operator/flowdpo_operator uses (the table in
operator/README.md, verified there against a real API server).
  flowdporuns            kopf lists/watches runs and patches its annotations; every sync GETs the current run
  flowdporuns/status     patch: phase, conditions and progress mirrored from progress.json
  configmaps             <run>-config (update: replaced on a spec change)
  jobs                   weights / prepare / trainer / compile / eval (patch: spec.suspend on 1.22+; delete: suspend
                         on older servers and of Kueue-managed Jobs)
  deployments            <run>-rollout (update: scale and spec changes; delete after training)
  secrets                get: the run's spec.storage.secretName, to read progress.json ("flowdpo.secretRules":
                         watched namespaces only, or cluster-wide with rbac.clusterWideSecrets)
  events                 create: phase changes and warnings on the run
Not granted: pods (Job and Deployment status suffice), any list/watch of children (read by name),
flowdporuns/finalizers (the children's ownerReferences do not set blockOwnerDeletion).
*/}}
{{- define "flowdpo.namespacedRules" -}}
- apiGroups: ["flowdpo.dev"]
  resources: ["flowdporuns"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["flowdpo.dev"]
  resources: ["flowdporuns/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* get of Secrets: the run's spec.storage.secretName, to read progress.json. Granted in each watched
namespace; cluster-wide only with rbac.clusterWideSecrets (otherwise runs are followed by their Jobs). */}}
{{- define "flowdpo.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
