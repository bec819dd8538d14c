pub struct Client {
    pub api_key: Option<String>,
    token: Arc<RwLock<String>>,
}
fn sign(private_key: &PrivateKey, secret: &hmac::Key) {}
let token: &str = &args.token;
let api_key = std::env::var("ANTHROPIC_API_KEY")?;
access_key_id: aws_sdk_s3::config::Credentials,
let mut tokens = "tuple.0.0".parse::<TokenStream>().unwrap();
