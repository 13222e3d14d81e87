"""InternVLChatModel: InternViT features, pixel-shuffled (2x2 patches -> one token), projected by
``mlp1`` (LayerNorm, Linear, GELU, Linear) into the LLM's embeddings at ``<IMG_CONTEXT>`` positions."""
import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_internvl_chat import InternVLChatConfig
from .modeling_intern_vit import InternVisionModel
from .modeling_internlm2 import InternLM2ForCausalLM

IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = '<img>', '</img>', '<IMG_CONTEXT>'


class InternVLChatModel(PreTrainedModel):
    config_class = InternVLChatConfig
    main_input_name = 'pixel_values'
    _no_split_modules = ['InternVisionEncoderLayer', 'InternLM2DecoderLayer']

    def __init__(self, config, vision_model=None, language_model=None):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        self.patch_size = config.vision_config.patch_size
        self.select_layer, self.downsample_ratio = config.select_layer, config.downsample_ratio
        self.ps_version, self.template = config.ps_version, config.template
        self.num_image_token = int((image_size // self.patch_size) ** 2 * config.downsample_ratio ** 2)
        self.vision_model = vision_model or InternVisionModel(config.vision_config)
        self.language_model = language_model or InternLM2ForCausalLM(config.llm_config)
        vit_hidden, llm_hidden = config.vision_config.hidden_size, config.llm_config.hidden_size
        shuffled = vit_hidden * int(1 / config.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(nn.LayerNorm(shuffled), nn.Linear(shuffled, llm_hidden), nn.GELU(),
                                  nn.Linear(llm_hidden, llm_hidden))
        self.img_context_token_id = None
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def pixel_shuffle(self, x, scale_factor=0.5):
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor)).permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        return x if self.ps_version == 'v1' else x.permute(0, 2, 1, 3).contiguous()

    def extract_feature(self, pixel_values):
        out = self.vision_model(pixel_values, output_hidden_states=self.select_layer != -1)
        vit_embeds = out.last_hidden_state if self.select_layer == -1 else out.hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:]
        side = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = self.pixel_shuffle(vit_embeds.reshape(vit_embeds.shape[0], side, side, -1), self.downsample_ratio)
        return self.mlp1(vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1]))

    def _embeds(self, pixel_values, input_ids):
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if self.img_context_token_id is None:
                raise ValueError('set model.img_context_token_id (the tokenizer\'s <IMG_CONTEXT> id) first')
            features = self.extract_feature(pixel_values)
            selected = input_ids == self.img_context_token_id
            embeds = embeds.clone()
            embeds[selected] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
        return embeds

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, image_flags=None, **kwargs):
        return self.language_model(inputs_embeds=self._embeds(pixel_values, input_ids), attention_mask=attention_mask)

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        """New token ids (greedy), as the official model's generate returns them."""
        settings = generation_config.to_dict() if generation_config is not None else {}
        settings.update(kwargs)
        return self.language_model.generate(inputs_embeds=self._embeds(pixel_values, input_ids),
                                            attention_mask=attention_mask,
                                            max_new_tokens=settings.get('max_new_tokens') or 20,
                                            eos_token_id=settings.get('eos_token_id'),
                                            do_sample=settings.get('do_sample', False))

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, **kwargs):
        """One answer to ``question`` (``<image>`` marks where the image goes; prepended if absent),
        the prompt rendered by the tokenizer's chat template, as the official ``chat`` does with its
        conversation template."""
        if pixel_values is not None and '<image>' not in question:
            question = '<image>\n' + question
        num_patches_list = num_patches_list or ([pixel_values.shape[0]] if pixel_values is not None else [])
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        messages = []
        for old_question, old_answer in history or []:
            messages += [{'role': 'user', 'content': old_question}, {'role': 'assistant', 'content': old_answer}]
        messages.append({'role': 'user', 'content': question})
        query = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for num_patches in num_patches_list:
            tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            query = query.replace('<image>', tokens, 1)
        inputs = tokenizer(query, return_tensors='pt', add_special_tokens=False)
        ids = self.generate(pixel_values, inputs['input_ids'].to(self.device),
                            inputs['attention_mask'].to(self.device), generation_config=None,
                            **generation_config)
        response = tokenizer.decode(ids[0], skip_special_tokens=True).strip()
        history = [*(history or []), (question, response)]
        return (response, history) if return_history else response
