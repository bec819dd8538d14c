package server

type Config struct {
	APIKey string `json:"api_key"`
	Token  string
}

func load() Config {
	password := os.Getenv("DB_PASSWORD")
	return Config{Token: cfg.GitHubToken, APIKey: password}
}
