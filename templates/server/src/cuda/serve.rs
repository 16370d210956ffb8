//! What `server serve` loads on a CUDA server: the model folder's tokenizer, a chat
//! template, and the GPU model as the engine's back end.

use std::path::Path;

use crate::backend::Backend;
use crate::chat_template::ChatTemplate;
use crate::http::launch::ServeError;
use crate::tokenizer::Tokenizer;

use super::{CommChoice, CudaError, ModelGroup};
use crate::plan_cuda;

/// Used when the folder's `tokenizer_config.json` has no `chat_template`: the roles and
/// contents one per line, then the assistant's turn.
const PLAIN_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";

/// A token id of `config.json` (`eos_token_id` may be a list: its first).
fn config_id(config: &serde_json::Value, key: &str) -> Option<u32> {
    let v = config.get(key)?;
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    v.as_u64().and_then(|id| u32::try_from(id).ok())
}

/// Reads a JSON file of the model folder.
fn read_json(dir: &Path, name: &str) -> Result<serde_json::Value, CudaError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| CudaError::Model(format!("{}: {e}", path.display())))
}

/// Loads tokenizer, chat template and model from a Hugging Face folder.
pub fn load(dir: &Path) -> Result<(Tokenizer, ChatTemplate, Box<dyn Backend>), ServeError> {
    let config = read_json(dir, "config.json")?;
    let (bos, eos) = (
        config_id(&config, "bos_token_id"),
        config_id(&config, "eos_token_id"),
    );
    let tokenizer = Tokenizer::from_hf_file(&dir.join("tokenizer.json"), bos, eos)?;
    let source = read_json(dir, "tokenizer_config.json")
        .ok()
        .and_then(|c| c.get("chat_template")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| PLAIN_CHAT_TEMPLATE.to_owned());
    let text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.decode(&[id], false).ok())
            .unwrap_or_default()
    };
    let chat_template = ChatTemplate::new(&source, text(bos), text(eos))?;
    let (model, _) = ModelGroup::load(dir, plan_cuda::TENSOR_PARALLEL, CommChoice::planned())?;
    Ok((tokenizer, chat_template, Box::new(model)))
}
