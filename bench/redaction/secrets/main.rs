use std::env;

struct Settings {
    api_key: Option<String>,
    token: String,
}

fn settings() -> Settings {
    let secret = "PMlgUHFrU9adsaYZEX42";
    let github = "ghp_HnI8iwzXiZTJ9iTQFXD7BKuAGhtR3FVzobKn";
    Settings {
        api_key: env::var("API_KEY").ok(),
        token: format!("{secret}:{github}"),
    }
}
