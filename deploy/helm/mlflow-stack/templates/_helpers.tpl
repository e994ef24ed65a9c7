{{/* Names: every object is "<release>-<name>-<component>" unless the release name already says it; <name>
     is nameOverride or the chart's name. */}}
{{- define "mlflow-stack.chartName" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlflow-stack.fullname" -}}
{{- $name := include "mlflow-stack.chartName" . -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-stack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlflow-stack.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required with serviceAccount.create=false: the existing ServiceAccount of the tracking server" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-stack.name" -}}{{ include "mlflow-stack.fullname" .root }}-{{ .component }}{{- end -}}

{{- define "mlflow-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlflow-stack.chartName" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mlflow-stack.labels" -}}
{{ include "mlflow-stack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Pods that may call the tracking server carry this label (the NetworkPolicy selects on it). */}}
{{- define "mlflow-stack.clientLabel" -}}
mlflow-stack/tracking-client: "true"
{{- end -}}

{{- define "mlflow-stack.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "mlflow-stack.trackingHost" -}}{{ include "mlflow-stack.name" (dict "root" . "component" "tracking") }}{{- end -}}
{{- define "mlflow-stack.trackingUri" -}}http://{{ include "mlflow-stack.trackingHost" . }}:{{ .Values.trackingServer.service.port }}{{- end -}}

{{/* Host headers MLflow accepts (its list REPLACES the defaults): the Service's names, with its port and
     without (HTTP clients leave out a default port: on port 80 they send `Host: <service>`), localhost for
     port-forwards and the in-pod healthcheck, and every Ingress host name. */}}
{{- define "mlflow-stack.allowedHosts" -}}
{{- $svc := include "mlflow-stack.trackingHost" . -}}
{{- $port := .Values.trackingServer.service.port | toString -}}
{{- $hosts := list -}}
{{- range list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.%s" $svc .Release.Namespace .Values.clusterDomain) -}}
{{- $hosts = append $hosts (printf "%s:%s" . $port) -}}
{{- $hosts = append $hosts . -}}
{{- end -}}
{{- $hosts = concat $hosts (list "localhost:*" "127.0.0.1:*") -}}
{{- if .Values.ingress.enabled -}}
{{- range .Values.ingress.hosts -}}
{{- $hosts = append $hosts . -}}
{{- $hosts = append $hosts (printf "%s:*" .) -}}
{{- end -}}
{{- end -}}
{{- range .Values.trackingServer.extraAllowedHosts -}}
{{- $hosts = append $hosts . -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/* Origins whose browser POSTs MLflow accepts besides localhost: each Ingress host as browsers reach it.
     MLflow refuses a state-changing request from any other Origin (mlflow/server/security_utils.py,
     should_block_cors_request), and the UI's own runs/search is a POST: without this the UI behind the
     Ingress could not list runs. */}}
{{- define "mlflow-stack.allowedOrigins" -}}
{{- $origins := list -}}
{{- if .Values.ingress.enabled -}}
{{- $scheme := ternary "https" "http" .Values.ingress.tls.enabled -}}
{{- range .Values.ingress.hosts -}}
{{- $origins = append $origins (printf "%s://%s" $scheme .) -}}
{{- $origins = append $origins (printf "%s://%s:*" $scheme .) -}}
{{- end -}}
{{- end -}}
{{- range .Values.trackingServer.extraAllowedOrigins -}}
{{- $origins = append $origins . -}}
{{- end -}}
{{- join "," $origins -}}
{{- end -}}

{{/* Required secrets: rendering fails naming the value to set, so no password is ever defaulted. */}}
{{- define "mlflow-stack.postgresSecret" -}}
{{- if .Values.postgresql.bundled -}}
{{- required "postgresql.auth.existingSecret is required: a Secret with the key 'password' for the bundled Postgres (kubectl create secret generic mlflow-postgres --from-literal=password=$(openssl rand -hex 24))" .Values.postgresql.auth.existingSecret -}}
{{- else -}}
{{- required "postgresql.external.existingSecret is required: a Secret whose key 'uri' holds postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB" .Values.postgresql.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The bundled object store's S3 port: MinIO's 9000 or SeaweedFS's 8333 (s3.bundledStore). */}}
{{- define "mlflow-stack.s3Port" -}}
{{- ternary "8333" "9000" (eq .Values.s3.bundledStore "seaweedfs") -}}
{{- end -}}

{{- define "mlflow-stack.s3Secret" -}}
{{- if and .Values.s3.bundled .Values.s3.workloadIdentity -}}
{{- fail "s3.workloadIdentity is for an external S3: the bundled object store needs s3.existingSecret (its S3 identity)" -}}
{{- end -}}
{{- required "s3.existingSecret is required: a Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for the bundled MinIO or SeaweedFS they become its S3 identity), or s3.workloadIdentity=true with an external S3" .Values.s3.existingSecret -}}
{{- end -}}

{{/* none, basic or oidc: auth.mode, or (empty) what auth.enabled said before auth.mode existed. */}}
{{- define "mlflow-stack.authMode" -}}
{{- $mode := .Values.auth.mode | default "" -}}
{{- if and .Values.auth.enabled (not (has $mode (list "" "basic"))) -}}
{{- fail (printf "auth.enabled=true means auth.mode=basic and contradicts auth.mode=%s: remove auth.enabled (or set it to false)" $mode) -}}
{{- end -}}
{{- default (ternary "basic" "none" .Values.auth.enabled) $mode -}}
{{- end -}}

{{- define "mlflow-stack.authSecret" -}}
{{- if eq (include "mlflow-stack.authMode" .) "oidc" -}}
{{- required "auth.existingSecret is required with auth.mode=oidc: a Secret with the key flask-secret-key (signs sessions, the same on every replica)" .Values.auth.existingSecret -}}
{{- else -}}
{{- required "auth.existingSecret is required with auth.mode=basic (auth.enabled): a Secret with the keys admin-username, admin-password and flask-secret-key" .Values.auth.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "mlflow-stack.clientAuthSecret" -}}
{{- if eq (include "mlflow-stack.authMode" .) "oidc" -}}
{{- required "auth.clientSecret is required with auth.mode=oidc for trainers and the model server: a Secret with the keys username and password, a service account and its token (docs/kubernetes.md: mlflow-stack-token)" .Values.auth.clientSecret -}}
{{- else -}}
{{- required "auth.clientSecret is required with auth.mode=basic (auth.enabled): a Secret with the keys username and password, the MLflow login of trainers and the model server" .Values.auth.clientSecret -}}
{{- end -}}
{{- end -}}

{{/* Where the provider sends the browser back: auth.oidc.redirectUri, else the first Ingress host's /callback. */}}
{{- define "mlflow-stack.oidcRedirectUri" -}}
{{- if .Values.auth.oidc.redirectUri -}}
{{- .Values.auth.oidc.redirectUri -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts (not (contains "*" (first .Values.ingress.hosts))) -}}
{{- printf "%s://%s/callback" (ternary "https" "http" .Values.ingress.tls.enabled) (first .Values.ingress.hosts) -}}
{{- else -}}
{{- fail "auth.oidc.redirectUri is required with auth.mode=oidc when no Ingress host names the server: the URL of its /callback as the browser reaches it, as registered at the provider" -}}
{{- end -}}
{{- end -}}

{{/* The provider's port for the NetworkPolicy: the issuer URL's, else its scheme's default. */}}
{{- define "mlflow-stack.oidcIssuerPort" -}}
{{- $url := urlParse .Values.auth.oidc.issuer -}}
{{- $hostPort := splitList ":" $url.host -}}
{{- if gt (len $hostPort) 1 -}}{{ last $hostPort }}{{- else -}}{{ ternary "443" "80" (eq $url.scheme "https") }}{{- end -}}
{{- end -}}

{{/* The provider's CA (auth.oidc.caConfigMap), a read-only file for the server and prepare. */}}
{{- define "mlflow-stack.oidcCaFile" -}}/run/oidc/ca.crt{{- end -}}
{{- define "mlflow-stack.oidcVolumeMounts" -}}
{{- if and (eq (include "mlflow-stack.authMode" .) "oidc") .Values.auth.oidc.caConfigMap }}
- {name: oidc-ca, mountPath: {{ dir (include "mlflow-stack.oidcCaFile" .) }}, readOnly: true}
{{- end }}
{{- end -}}
{{- define "mlflow-stack.oidcVolumes" -}}
{{- if and (eq (include "mlflow-stack.authMode" .) "oidc") .Values.auth.oidc.caConfigMap }}
- name: oidc-ca
  configMap:
    name: {{ .Values.auth.oidc.caConfigMap }}
    items:
      - {key: {{ .Values.auth.oidc.caConfigMapKey }}, path: {{ base (include "mlflow-stack.oidcCaFile" .) }}}
{{- end }}
{{- end -}}

{{/* The environment both `prepare` and `serve` read (INTERFACE.md): database, S3, auth, server sizing. */}}
{{- define "mlflow-stack.serverEnv" -}}
{{- if .Values.postgresql.bundled }}
- name: POSTGRES_HOST
  value: {{ include "mlflow-stack.name" (dict "root" . "component" "postgres") }}
- name: POSTGRES_PORT
  value: "5432"
- name: POSTGRES_USER
  value: {{ .Values.postgresql.auth.username | quote }}
- name: POSTGRES_DB
  value: {{ .Values.postgresql.auth.database | quote }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.postgresSecret" . }}
      key: {{ .Values.postgresql.auth.passwordKey }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.postgresSecret" . }}
      key: {{ .Values.postgresql.external.uriKey }}
{{- end }}
{{- if .Values.s3.bundled }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: http://{{ include "mlflow-stack.name" (dict "root" . "component" .Values.s3.bundledStore) }}:{{ include "mlflow-stack.s3Port" . }}
{{- else if .Values.s3.endpointUrl }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ .Values.s3.endpointUrl | quote }}
{{- end }}
{{- if and (not .Values.s3.bundled) .Values.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- end }}
{{- if not (and .Values.s3.workloadIdentity (not .Values.s3.bundled)) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.s3Secret" . }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.s3Secret" . }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end }}
- name: MLFLOW_ARTIFACTS_BUCKET
  value: {{ .Values.s3.bucket | quote }}
{{- with .Values.s3.artifactsDestination }}
- name: MLFLOW_ARTIFACTS_DESTINATION
  value: {{ . | quote }}
{{- end }}
{{- $mode := include "mlflow-stack.authMode" . }}
- name: MLFLOW_AUTH
  value: {{ $mode }}
{{- if eq $mode "basic" }}
- name: MLFLOW_AUTH_ADMIN_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.authSecret" . }}
      key: admin-username
- name: MLFLOW_AUTH_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.authSecret" . }}
      key: admin-password
- name: MLFLOW_FLASK_SERVER_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.authSecret" . }}
      key: flask-secret-key
- name: MLFLOW_AUTH_CACHE_SECONDS
  value: {{ .Values.auth.loginCacheSeconds | quote }}
- name: MLFLOW_AUTH_DECISION_CACHE_SECONDS
  value: {{ .Values.auth.decisionCacheSeconds | quote }}
{{- with .Values.auth.databaseUriSecret }}
- name: MLFLOW_AUTH_DATABASE_URI
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.auth.databaseUriKey }}
{{- end }}
{{- else if eq $mode "oidc" }}
{{- $oidc := .Values.auth.oidc }}
- name: MLFLOW_FLASK_SERVER_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.authSecret" . }}
      key: flask-secret-key
- name: MLFLOW_OIDC_ISSUER
  value: {{ required "auth.oidc.issuer is required with auth.mode=oidc: the provider's issuer URL" $oidc.issuer | quote }}
- name: MLFLOW_OIDC_CLIENT_ID
  value: {{ required "auth.oidc.clientId is required with auth.mode=oidc: the client registered at the provider" $oidc.clientId | quote }}
# Read from the Secret by the kubelet: the chart never holds the client secret.
- name: MLFLOW_OIDC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ required "auth.oidc.existingSecret is required with auth.mode=oidc: a Secret with the client secret (key auth.oidc.existingSecretKey, client-secret by default)" $oidc.existingSecret }}
      key: {{ $oidc.existingSecretKey }}
- name: MLFLOW_OIDC_REDIRECT_URI
  value: {{ include "mlflow-stack.oidcRedirectUri" . | quote }}
- name: MLFLOW_OIDC_GROUPS_CLAIM
  value: {{ $oidc.groupsClaim | quote }}
- name: MLFLOW_OIDC_ADMIN_GROUP
  value: {{ $oidc.adminGroup | quote }}
- name: MLFLOW_OIDC_USER_GROUPS
  value: {{ $oidc.userGroups | quote }}
- name: MLFLOW_OIDC_SCOPES
  value: {{ $oidc.scopes | quote }}
- name: MLFLOW_OIDC_USERNAME_CLAIM
  value: {{ $oidc.usernameClaim | quote }}
# The cap on the allowances remembered for plugin access tokens (fast_path_oidc.py).
- name: MLFLOW_AUTH_DECISION_CACHE_SECONDS
  value: {{ .Values.auth.decisionCacheSeconds | quote }}
{{- if $oidc.caConfigMap }}
- name: MLFLOW_OIDC_CA_FILE
  value: {{ include "mlflow-stack.oidcCaFile" . }}
{{- end }}
{{- end }}
- name: MLFLOW_WORKERS
  value: {{ .Values.trackingServer.workers | quote }}
- name: MLFLOW_REQUEST_THREADS
  value: {{ .Values.trackingServer.requestThreads | quote }}
- name: MLFLOW_SERVER_ALLOWED_HOSTS
  value: {{ include "mlflow-stack.allowedHosts" . | quote }}
{{- with include "mlflow-stack.allowedOrigins" . }}
- name: MLFLOW_SERVER_CORS_ALLOWED_ORIGINS
  value: {{ . | quote }}
{{- end }}
- name: MLFLOW_SERVER_ENABLE_JOB_EXECUTION
  value: {{ .Values.trackingServer.enableJobExecution | quote }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
{{- end -}}

{{/* prepare alone creates the client user, so only it reads the client's password (basic; with oidc an admin
     issues the client's token with mlflow-stack-token). */}}
{{- define "mlflow-stack.prepareEnv" -}}
{{- include "mlflow-stack.serverEnv" . }}
- name: MLFLOW_BOOTSTRAP_TIMEOUT
  value: {{ .Values.prepare.timeoutSeconds | quote }}
{{- if eq (include "mlflow-stack.authMode" .) "basic" }}
- name: MLFLOW_AUTH_CLIENT_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.clientAuthSecret" . }}
      key: username
- name: MLFLOW_AUTH_CLIENT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.clientAuthSecret" . }}
      key: password
{{- end }}
{{- end -}}

{{/* The login of trainers and the model server (never a database or S3 secret): a password with basic auth, a
     service account's token with oidc. */}}
{{- define "mlflow-stack.clientEnv" -}}
- name: MLFLOW_TRACKING_URI
  value: {{ include "mlflow-stack.trackingUri" . }}
# MLflow's usage telemetry (on by default since 3.2) stays off: no calls home from the cluster, and its
# client toggles an environment variable from a thread, which can fail a concurrent request (KeyError
# '_MLFLOW_TELEMETRY_SESSION_ID', seen here with no internet).
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
{{- if ne (include "mlflow-stack.authMode" .) "none" }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.clientAuthSecret" . }}
      key: username
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.clientAuthSecret" . }}
      key: password
{{- end }}
{{- end -}}

{{/* (dict "root" $ "uid" N); podSecurity.fixedUid=false leaves the uid to the platform (OpenShift SCC). */}}
{{- define "mlflow-stack.podSecurityContext" -}}
runAsNonRoot: true
{{- if .root.Values.podSecurity.fixedUid }}
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Per-component pod extras (. = the component's values): scheduling classes; indent with nindent. */}}
{{- define "mlflow-stack.podSpecExtras" -}}
{{- $lines := list -}}
{{- with .priorityClassName }}{{ $lines = append $lines (printf "priorityClassName: %s" .) }}{{ end -}}
{{- with .runtimeClassName }}{{ $lines = append $lines (printf "runtimeClassName: %s" .) }}{{ end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{- define "mlflow-stack.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .readOnly }}
capabilities:
  drop: [ALL]
{{- end -}}

{{/* NetworkPolicy egress rules shared by several policies. */}}
{{- define "mlflow-stack.dnsEgress" -}}
- ports:
    {{- range .Values.networkPolicy.dnsPorts }}
    - {protocol: UDP, port: {{ . }}}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}
{{- define "mlflow-stack.storeEgress" -}}
{{- $root := . -}}
{{- if .Values.postgresql.bundled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "mlflow-stack.selectorLabels" (dict "root" $root "component" "postgres") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 5432}
{{- else }}
- to:
    {{- toYaml .Values.postgresql.external.networkPolicyPeers | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ .Values.postgresql.external.port }}}
{{- end }}
{{- if .Values.s3.bundled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "mlflow-stack.selectorLabels" (dict "root" $root "component" .Values.s3.bundledStore) | nindent 10 }}
  ports:
    - {protocol: TCP, port: {{ include "mlflow-stack.s3Port" . }}}
{{- else }}
- to:
    {{- toYaml .Values.s3.external.networkPolicyPeers | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ .Values.s3.external.port }}}
{{- end }}
{{- end -}}
{{- define "mlflow-stack.trackingEgress" -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "mlflow-stack.selectorLabels" (dict "root" . "component" "tracking") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 5000}
{{- end -}}
