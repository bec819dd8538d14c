import { z } from "zod";

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
