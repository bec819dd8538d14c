export TOKEN=$(cat ~/.config/token)
SECRET_KEY_FILE=/run/secrets/django_key
OPENAI_API_KEY=sk-...
API_KEY=changeme123
echo "$TOKEN" | docker login --password-stdin
