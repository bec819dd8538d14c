import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = 'django-insecure-Jn5Z8BG2%J8naPpBm8CV^qEl3A2R2GvTVuxfm$9a'
DEBUG = os.environ.get("DEBUG", "0") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

AWS_ACCESS_KEY_ID = "AKIACATM46YVDS3IJDHX"
aws_secret_access_key = "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"
STRIPE_KEY = os.getenv("STRIPE_KEY", "sk_live_I9EjYoNUKBKsLDDObk4Lqxta")

def api_key():
    return os.environ["OPENAI_API_KEY"]
