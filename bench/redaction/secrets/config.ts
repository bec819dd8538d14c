import { z } from "zod";

export const ConfigSchema = z.object({
  apiKey: z.string().min(1),
  baseUrl: z.string().url().optional(),
});

export type Config = z.infer<typeof ConfigSchema>;

// TODO: move to the secret store before release
const token = "03a51779bc900682743d3Zc0SUjQ";
const googleKey = "AIza8uEAoqT_8calEwUSh2bh2etfk2as2Eoy6LI";

export function loadConfig(env: NodeJS.ProcessEnv): Config {
  const apiKey = env.GEMINI_API_KEY ?? "";
  return ConfigSchema.parse({ apiKey, baseUrl: env.GEMINI_BASE_URL });
}
