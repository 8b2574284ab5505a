{{/*
Names are fixed, not derived from the release name: the cluster-scoped objects (ClusterRoles,
webhook configurations, ValidatingAdmissionPolicies) are singletons, so one release per
cluster, and the operator's user name is derived from the ServiceAccount kube-pim.
*/}}

{{/* The labels every object of the release carries besides app.kubernetes.io/name. */}}
{{- define "kube-pim.releaseLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{- define "kube-pim.labels" -}}
app.kubernetes.io/name: kube-pim
{{ include "kube-pim.releaseLabels" . }}
{{- end -}}

{{/* Selects the operator's Pods. */}}
{{- define "kube-pim.selectorLabels" -}}
app.kubernetes.io/name: kube-pim
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Selects the sweep's Pods. */}}
{{- define "kube-pim.sweepSelectorLabels" -}}
app.kubernetes.io/name: kube-pim
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: sweep
{{- end -}}

{{/* The operator's user name: the one exemption in every admission guard. */}}
{{- define "kube-pim.operatorUsername" -}}
system:serviceaccount:{{ .Release.Namespace }}:kube-pim
{{- end -}}

{{- define "kube-pim.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The DNS names of the webhook Service (its serving certificate's SANs). */}}
{{- define "kube-pim.webhookDNSNames" -}}
{{- $svc := printf "kube-pim-webhook.%s.svc" .Release.Namespace -}}
{{- toJson (list "kube-pim-webhook" (printf "kube-pim-webhook.%s" .Release.Namespace) $svc (printf "%s.cluster.local" $svc)) -}}
{{- end -}}

{{/*
selfSigned mode: the CA and serving certificate, as JSON {ca, cert, key} (PEM). Generated once
per render and remembered in .Values (shared by every template of the render), so the Secret
and both webhook configurations get the same CA; an existing Secret is reused, so the
certificate stays the same across upgrades.
*/}}
{{- define "kube-pim.webhookTLS" -}}
{{- if not (hasKey .Values "kubePimWebhookTLS") -}}
{{- $tls := dict -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace "kube-pim-webhook-tls" -}}
{{- $data := dict -}}
{{- if $old -}}{{- $data = $old.data | default dict -}}{{- end -}}
{{- if and (hasKey $data "ca.crt") (hasKey $data "tls.crt") (hasKey $data "tls.key") -}}
{{- $_ := set $tls "ca" (index $data "ca.crt" | b64dec) -}}
{{- $_ := set $tls "cert" (index $data "tls.crt" | b64dec) -}}
{{- $_ := set $tls "key" (index $data "tls.key" | b64dec) -}}
{{- else -}}
{{- $days := int .Values.webhook.tls.selfSigned.validityDays -}}
{{- $ca := genCA "kube-pim-webhook-ca" $days -}}
{{- $names := include "kube-pim.webhookDNSNames" . | fromJsonArray -}}
{{- $cert := genSignedCert (printf "kube-pim-webhook.%s.svc" .Release.Namespace) nil $names $days $ca -}}
{{- $_ := set $tls "ca" $ca.Cert -}}
{{- $_ := set $tls "cert" $cert.Cert -}}
{{- $_ := set $tls "key" $cert.Key -}}
{{- end -}}
{{- $_ := set .Values "kubePimWebhookTLS" $tls -}}
{{- end -}}
{{- toJson .Values.kubePimWebhookTLS -}}
{{- end -}}

{{/* selfSigned mode: the webhook configurations' caBundle (base64 PEM). */}}
{{- define "kube-pim.caBundle" -}}
{{- (include "kube-pim.webhookTLS" . | fromJson).ca | b64enc -}}
{{- end -}}

{{/* The restricted container securityContext (Pod Security Standards "restricted"). */}}
{{- define "kube-pim.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kube-pim.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* NetworkPolicy egress: DNS and the API server only. */}}
{{- define "kube-pim.egress" -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.dns.enabled }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
- ports:
    {{- range $np.apiServer.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.apiServer.cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}
