"""Writes the labelled redaction corpus (bench/redaction/secrets/, negatives/, labels.json).

The secrets are fake, generated here from a fixed seed in each kind's real shape; the code
around them is ordinary code of each language agents read. Run once; the output is committed,
so the bench scores the same text every time.

usage: python3 bench/redaction/make_corpus.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(13)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"


def r(n, alphabet=ALNUM):
    return "".join(rng.choice(alphabet) for _ in range(n))


def pem(kind="RSA"):
    body = "\n".join(r(64, B64) for _ in range(8)) + "\n" + r(24, B64) + "=="
    return f"-----BEGIN {kind} PRIVATE KEY-----\n{body}\n-----END {kind} PRIVATE KEY-----"


S = {
    "openai": "sk-proj-" + r(48),
    "anthropic": "sk-ant-api03-" + r(80, ALNUM + "-_") + "AA",
    "google": "AIza" + r(35, ALNUM + "-_"),
    "aws_id": "AKIA" + r(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
    "aws_secret": r(40, B64),
    "github": "ghp_" + r(36),
    "github_pat": "github_pat_" + r(22) + "_" + r(59),
    "gitlab": "glpat-" + r(20, ALNUM + "-_"),
    "slack": "xoxb-" + r(12, "0123456789") + "-" + r(13, "0123456789") + "-" + r(24),
    "slack_hook": "https://hooks.slack.com/services/T" + r(8, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + "/B" + r(10, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + "/" + r(24),
    "stripe": "sk_live_" + r(24),
    "sendgrid": "SG." + r(22, ALNUM + "-_") + "." + r(43, ALNUM + "-_"),
    "twilio_key": "SK" + r(32, HEX),
    "twilio_token": r(32, HEX),
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ" + r(60, ALNUM + "-_") + "." + r(43, ALNUM + "-_"),
    "db_pass": r(6) + "7" + r(5) + "!",
    "env_pass": r(14),
    "yaml_pass": r(5) + "&" + r(3) + "9" + r(4),
    "py_secret": "django-insecure-" + r(40, ALNUM + "#@!$%^&*"),
    "ts_token": r(20, HEX) + r(8),
    "go_token": r(24),
    "rs_secret": r(18) + "42",
    "sh_token": r(10, HEX) + r(10),
    "json_pass": r(12) + "3",
    "toml_key": r(28),
}
for k in ["env_pass", "go_token", "toml_key"]:
    # Random strings of letters alone would not count as secrets: mix in digits, as real ones do.
    S[k] = S[k][:5] + "8" + S[k][6:9] + "2" + S[k][10:]

POSITIVE = {
    "secrets/app.env": (f"""# Local development settings
NODE_ENV=development
PORT=3000
LOG_LEVEL=debug
OPENAI_API_KEY={S['openai']}
ANTHROPIC_API_KEY={S['anthropic']}
DATABASE_URL=postgres://app:{S['db_pass']}@db.internal:5432/app
DB_PASSWORD={S['env_pass']}
TWILIO_AUTH_TOKEN={S['twilio_token']}
SENDGRID_API_KEY={S['sendgrid']}
REDIS_URL=redis://localhost:6379/0
FEATURE_FLAGS=search,billing
""", [("OPENAI_API_KEY", "openai_key"), ("ANTHROPIC_API_KEY", "anthropic_key"), ("DATABASE_URL", "url_credentials"),
      ("DB_PASSWORD", "secret_assignment"), ("TWILIO_AUTH_TOKEN", "secret_assignment"), ("SENDGRID_API_KEY", "sendgrid_key")]),
    "secrets/config.ts": (f"""import {{ z }} from "zod";

export const ConfigSchema = z.object({{
  apiKey: z.string().min(1),
  baseUrl: z.string().url().optional(),
}});

export type Config = z.infer<typeof ConfigSchema>;

// TODO: move to the secret store before release
const token = "{S['ts_token']}";
const googleKey = "{S['google']}";

export function loadConfig(env: NodeJS.ProcessEnv): Config {{
  const apiKey = env.GEMINI_API_KEY ?? "";
  return ConfigSchema.parse({{ apiKey, baseUrl: env.GEMINI_BASE_URL }});
}}
""", [("const token", "secret_assignment"), ("googleKey", "google_api_key")]),
    "secrets/settings.py": (f"""import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = '{S['py_secret']}'
DEBUG = os.environ.get("DEBUG", "0") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

AWS_ACCESS_KEY_ID = "{S['aws_id']}"
aws_secret_access_key = "{S['aws_secret']}"
STRIPE_KEY = os.getenv("STRIPE_KEY", "{S['stripe']}")

def api_key():
    return os.environ["OPENAI_API_KEY"]
""", [("SECRET_KEY", "secret_assignment"), ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
      ("aws_secret_access_key", "aws_secret_key"), ("STRIPE_KEY", "stripe_key")]),
    "secrets/client.go": (f"""package client

import (
	"net/http"
	"os"
)

type Config struct {{
	Token   string `json:"token"`
	BaseURL string `json:"base_url"`
}}

var defaults = Config{{
	Token:   "{S['go_token']}",
	BaseURL: "https://api.internal.acme.io",
}}

func New() *http.Client {{
	token := os.Getenv("ACME_TOKEN")
	_ = token
	return &http.Client{{}}
}}
""", [("Token:   \"", "secret_assignment")]),
    "secrets/main.rs": (f"""use std::env;

struct Settings {{
    api_key: Option<String>,
    token: String,
}}

fn settings() -> Settings {{
    let secret = "{S['rs_secret']}";
    let github = "{S['github']}";
    Settings {{
        api_key: env::var("API_KEY").ok(),
        token: format!("{{secret}}:{{github}}"),
    }}
}}
""", [("let secret", "secret_assignment"), ("let github", "github_token")]),
    "secrets/values.yaml": (f"""replicaCount: 2
image:
  repository: ghcr.io/acme/api
  tag: "1.4.2"
postgresql:
  auth:
    username: app
    password: "{S['yaml_pass']}"
    database: app
slack:
  webhook: {S['slack_hook']}
  botToken: {S['slack']}
resources:
  limits:
    cpu: 500m
""", [("password: \"", "secret_assignment"), ("webhook:", "slack_webhook"), ("botToken:", "slack_token")]),
    "secrets/deploy.sh": (f"""#!/usr/bin/env bash
set -euo pipefail
export GITLAB_TOKEN={S['gitlab']}
export API_TOKEN={S['sh_token']}
curl -sf -H "Authorization: Bearer $API_TOKEN" https://deploy.acme.io/v1/release
echo "deployed"
""", [("GITLAB_TOKEN", "gitlab_token"), ("API_TOKEN=", "secret_assignment")]),
    "secrets/credentials.json": (json.dumps({
        "type": "service",
        "client_email": "svc@acme.iam",
        "password": S["json_pass"],
        "session": S["jwt"],
        "github": S["github_pat"],
    }, indent=2) + "\n", [("\"password\"", "secret_assignment"), ("\"session\"", "jwt"), ("\"github\"", "github_token")]),
    "secrets/config.toml": (f"""[server]
port = 8080

[upstream]
api_key = "{S['toml_key']}"
twilio = "{S['twilio_key']}"
""", [("api_key", "secret_assignment"), ("twilio", "twilio_key")]),
    "secrets/deploy_key.txt": (f"""Here is the deploy key you asked for:

{pem('RSA')}

Add it to ~/.ssh and run ssh-add.
""", [("-----BEGIN", "private_key")]),
    "secrets/chat_paste.md": (f"""I get a 401 when I run the script, here is my config:

```
OPENAI_API_KEY={S['openai']}
```

and the traceback says `AuthenticationError`. What is wrong?
""", [("OPENAI_API_KEY", "openai_key")]),
}

NEGATIVE = {
    "negatives/schema.ts": """import { z } from "zod";

export const ProviderSchema = z.object({
  apiKey: z.ZodOptional<z.ZodString>,
  token?: string;
  password: string;
  secretName: z.string().default("gemini-api-key"),
});
const apiKey = process.env.GEMINI_API_KEY;
const token = await getAccessToken(client);
const secret = config.auth.clientSecret;
export const API_KEY_ENV = "GEMINI_API_KEY";
const TOKEN_URL = "https://oauth2.googleapis.com/token";
headers: { 'X-Api-Key': apiKey, Authorization: `Bearer ${token}` }
accessToken: PropTypes.string.isRequired,
password: yup.string().min(8).required(),
if (token === expectedToken) { return true; }
const TOKEN_HEADER = "X-Auth-Token-Header";
""",
    "negatives/client.py": """import os
api_key = os.environ["OPENAI_API_KEY"]
api_key = os.getenv("OPENAI_API_KEY")
token = self.config.github_token
client = OpenAI(api_key=api_key, base_url=base_url)
password_hash = base64Encoded
secret_key: Optional[str] = None
token = request.headers["Authorization"]
self.access_token = response.json()["access_token"]
db_password = settings.DATABASES["default"]["PASSWORD"]
tokenizer = AutoTokenizer.from_pretrained(model_name)
max_tokens: int = 4096
conn = "host=%(host)s password=%(password)s"
logger.info("token refreshed for %s", user)
api_key: "your-api-key-here"
""",
    "negatives/server.go": """package server

type Config struct {
	APIKey string `json:"api_key"`
	Token  string
}

func load() Config {
	password := os.Getenv("DB_PASSWORD")
	return Config{Token: cfg.GitHubToken, APIKey: password}
}
""",
    "negatives/lib.rs": """pub struct Client {
    pub api_key: Option<String>,
    token: Arc<RwLock<String>>,
}
fn sign(private_key: &PrivateKey, secret: &hmac::Key) {}
let token: &str = &args.token;
let api_key = std::env::var("ANTHROPIC_API_KEY")?;
access_key_id: aws_sdk_s3::config::Credentials,
let mut tokens = "tuple.0.0".parse::<TokenStream>().unwrap();
""",
    "negatives/ci.yaml": """env:
  token: ${{ secrets.GITHUB_TOKEN }}
  password: ${DB_PASSWORD}
  apiKey: {{ .Values.apiKey }}
  token_path: ~/.config/gh/hosts.yml
  DATABASE_URL: postgres://postgres:password@localhost:5432/app
  docs_url: https://user:pass@example.com/private
""",
    "negatives/run.sh": """export TOKEN=$(cat ~/.config/token)
SECRET_KEY_FILE=/run/secrets/django_key
OPENAI_API_KEY=sk-...
API_KEY=changeme123
echo "$TOKEN" | docker login --password-stdin
""",
    "negatives/strings.json": """{
  "password": "Password",
  "passwordHint": "At least 8 characters",
  "tokenExpired": "Your session has expired",
  "apiKeyLabel": "API key"
}
""",
    "negatives/parser.c": """static const char *kHeader = "-----BEGIN RSA PRIVATE KEY-----";
size_t private_key_len = X25519_PRIVATE_KEY_LEN;
const size_t P256_SECRET_SIZE = EC_P256R1_FIELD_ELEM_BYTES;
token_length = kP384PointLen;
""",
}


def line_of(text, needle):
    at = text.index(needle)
    return text.count("\n", 0, at) + 1


def main():
    labels = []
    for path, (text, secrets) in POSITIVE.items():
        full = os.path.join(HERE, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        open(full, "w").write(text)
        for needle, kind in secrets:
            labels.append({"file": path, "line": line_of(text, needle), "kind": kind})
    for path, text in NEGATIVE.items():
        full = os.path.join(HERE, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        open(full, "w").write(text)
    json.dump(labels, open(os.path.join(HERE, "labels.json"), "w"), indent=1)
    print(f"{len(labels)} labelled secrets in {len(POSITIVE)} files, {len(NEGATIVE)} files of hard negatives")


main()
