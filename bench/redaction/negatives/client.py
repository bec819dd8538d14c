import os
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
