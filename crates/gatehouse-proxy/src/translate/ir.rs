//! The one internal representation every wire format translates through: a chat request, a
//! complete response, and the events of a streamed one. It keeps what the formats share and
//! what a translation must not lose (tool calls with their ids, images, thinking with its
//! signature, cached-token usage, stop reasons); it is never used when client and provider speak
//! the same format.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub model: String,
    /// System prompt parts, in order.
    pub system: Vec<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Choices asked for (OpenAI `n`); providers without it answer one.
    pub n: Option<u32>,
    /// End-user id (`user` / `metadata.user_id`).
    pub user: Option<String>,
    /// Extended thinking budget, in tokens.
    pub thinking_budget: Option<u64>,
    pub parallel_tool_calls: Option<bool>,
    /// Structured output, in chat completions' `response_format` shape.
    pub response_format: Option<Value>,
    /// `low` / `medium` / `high` (OpenAI's reasoning effort).
    pub reasoning_effort: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    /// A call the assistant made. `input` is the arguments as JSON; arguments that were not
    /// valid JSON are kept as a JSON string so nothing is lost.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// The result of a call, sent back by the user side.
    ToolResult {
        id: String,
        /// Text and images.
        content: Vec<Part>,
        is_error: bool,
    },
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Anthropic's encrypted thinking; only Anthropic can read it back.
    RedactedThinking(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Base64 { media_type: String, data: String },
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    Tool(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    /// A stop sequence was hit (OpenAI says `stop`).
    StopSequence,
    /// Anything else, by the provider's own name.
    Other(String),
}

/// Token usage. `input` counts every prompt token, cached ones included (OpenAI's meaning);
/// Anthropic's `input_tokens` leaves out cache reads and writes, and translations convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    pub reasoning: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub content: Vec<Part>,
    pub finish: Option<FinishReason>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: String,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
}

/// One step of a streamed answer. `choice` is the choice index (0 unless `n` > 1).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        id: String,
        model: String,
    },
    Text {
        choice: u32,
        text: String,
    },
    Thinking {
        choice: u32,
        text: String,
    },
    ThinkingSignature {
        choice: u32,
        signature: String,
    },
    /// A tool call begins; `index` numbers the calls of one choice from 0.
    ToolStart {
        choice: u32,
        index: u32,
        id: String,
        name: String,
    },
    /// More of a call's arguments (a piece of JSON text).
    ToolArgs {
        choice: u32,
        index: u32,
        json: String,
    },
    Finish {
        choice: u32,
        reason: FinishReason,
    },
    Usage(Usage),
    /// The provider reported an error inside the stream.
    Error {
        kind: String,
        message: String,
    },
}
