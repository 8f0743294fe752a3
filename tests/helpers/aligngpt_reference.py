"""The reference: AlignGPT's PyTorch code, transcribed (github.com/AlignGPT-VL/AlignGPT).

- `AlignIndicator`, `GatedWeightLayer`: src/model/multimodal_components/mm_align.py, with
  N_IMAGE_TOKEN (576 there) a parameter so tiny models can use it.
- `AlignGPTReference.forward`: `AlignGPTForCausalLM.forward` + `prepare_inputs_labels_for_multimodal`
  (src/model/aligngpt.py) for right padding, `position_ids=None` (as the HF Trainer calls it), no
  truncation; `encode_images` is replaced by given per-sample image features (one image per
  sample, zeros for text-only samples, as their collator/dataset provide). Kept literal.
"""

from __future__ import annotations

import torch
import torch.nn as nn

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
N_INDICATOR_TOKEN = 1


class AlignIndicator(nn.Module):
    def __init__(self, hidden_size, n_indicators=8) -> None:
        super().__init__()
        self.indicator_embs = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_indicators, hidden_size)))

    def __call__(self, ids):
        return self.indicator_embs[ids]

    def lin_comb(self, b_weight_scores):
        indicators = self.indicator_embs[:-1]
        final_indicators = torch.matmul(b_weight_scores, indicators) + self.indicator_embs[-1]
        return final_indicators


class GatedWeightLayer(nn.Module):
    def __init__(self, n_image_token, n_components=7) -> None:
        super().__init__()
        self.mlp = nn.Sequential(*[nn.Linear(n_image_token, 256), nn.GELU(), nn.Linear(256, n_components)])

    def forward(self, image_embeds, text_embeds, text_attention_mask):
        scale = torch.sum(text_attention_mask.int(), dim=-1, keepdim=True).to(dtype=text_embeds.dtype)
        avg_text_embeds = torch.sum(text_embeds, dim=1) / (scale + 1e-8)
        dots = torch.sum(image_embeds * avg_text_embeds.unsqueeze(dim=1), dim=-1)
        scores = self.mlp(dots)
        scores = scores.softmax(dim=-1)
        return scores


def _pad(rows, length, dim, dtype):
    return torch.stack([torch.cat((r, torch.zeros((length - r.shape[0], dim), dtype=dtype)), dim=0) for r in rows])


class AlignGPTReference:
    def __init__(self, lm, align_indicators: AlignIndicator, gated_weight_layer: GatedWeightLayer, stage: str):
        self.lm, self.stage = lm, stage
        self.align_indicators, self.gated_weight_layer = align_indicators, gated_weight_layer

    def embed_tokens(self, ids):
        return self.lm.model.embed_tokens(ids)

    def prepare(self, input_ids, attention_mask, labels, image_features):
        attention_mask = attention_mask.bool()
        input_ids = [cur_input_ids[cur_attention_mask]
                     for cur_input_ids, cur_attention_mask in zip(input_ids, attention_mask)]
        labels = [cur_labels[cur_attention_mask] for cur_labels, cur_attention_mask in zip(labels, attention_mask)]
        image_embeds, image_labels, text_embeds, text_labels = [], [], [], []
        new_input_embeds, new_labels = [], []
        pure_text_embeds, pure_text_labels = None, None
        cur_image_idx = 0
        for batch_idx, cur_input_ids in enumerate(input_ids):
            num_images = (cur_input_ids == IMAGE_TOKEN_INDEX).sum()
            if num_images == 0:
                cur_image_features = image_features[cur_image_idx]
                cur_input_embeds = torch.cat([self.embed_tokens(cur_input_ids), cur_image_features[0:0]], dim=0)
                if pure_text_embeds is None:
                    pure_text_embeds, pure_text_labels = [], []
                pure_text_embeds.append(cur_input_embeds)
                pure_text_labels.append(labels[batch_idx])
                cur_image_idx += 1
                continue
            image_token_indices = ([-1] + torch.where(cur_input_ids == IMAGE_TOKEN_INDEX)[0].tolist()
                                   + [cur_input_ids.shape[0]])
            cur_input_ids_noim, cur_labels_noim = [], []
            cur_labels = labels[batch_idx]
            for i in range(len(image_token_indices) - 1):
                cur_input_ids_noim.append(cur_input_ids[image_token_indices[i] + 1:image_token_indices[i + 1]])
                cur_labels_noim.append(cur_labels[image_token_indices[i] + 1:image_token_indices[i + 1]])
            split_sizes = [x.shape[0] for x in cur_labels_noim]
            cur_input_embeds_no_im = torch.split(self.embed_tokens(torch.cat(cur_input_ids_noim)), split_sizes, dim=0)
            cur_new_input_embeds, cur_new_labels, cur_text_embeds, cur_image_embeds = [], [], [], []
            for i in range(num_images + 1):
                cur_new_input_embeds.append(cur_input_embeds_no_im[i])
                cur_new_labels.append(cur_labels_noim[i])
                cur_text_embeds.append(cur_input_embeds_no_im[i])
                if i < num_images:
                    cur_image_features = image_features[cur_image_idx]
                    cur_image_idx += 1
                    pad_im_labels = torch.full((cur_image_features.shape[0],), IGNORE_INDEX, dtype=cur_labels.dtype)
                    cur_new_input_embeds.append(cur_image_features)
                    cur_new_labels.append(pad_im_labels)
                    cur_image_embeds.append(cur_image_features)
            new_input_embeds.append(torch.cat(cur_new_input_embeds))
            new_labels.append(torch.cat(cur_new_labels))
            text_embeds.append(torch.cat(cur_text_embeds))
            image_embeds.append(torch.cat(cur_image_embeds))

        out = {}
        if new_input_embeds:
            dim, dt = new_input_embeds[0].shape[1], new_input_embeds[0].dtype
            max_len = max(x.shape[0] for x in new_input_embeds)
            max_text_len = max(x.shape[0] for x in text_embeds)
            max_image_len = max(x.shape[0] for x in image_embeds)
            n = len(new_input_embeds)
            labels_padded = torch.full((n, max_len + N_INDICATOR_TOKEN), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((n, max_len + N_INDICATOR_TOKEN), dtype=torch.bool)
            text_mask = torch.zeros((n, max_text_len), dtype=torch.bool)
            image_mask = torch.zeros((n, max_image_len), dtype=torch.bool)
            for i, (lab, emb, temb, iemb) in enumerate(zip(new_labels, new_input_embeds, text_embeds, image_embeds)):
                cur_len = emb.shape[0]
                labels_padded[i, :1] = lab[:1]
                labels_padded[i, N_INDICATOR_TOKEN + 1:N_INDICATOR_TOKEN + cur_len] = lab[1:]
                mask[i, :cur_len + N_INDICATOR_TOKEN] = True
                text_mask[i, :temb.shape[0]] = True
                image_mask[i, :iemb.shape[0]] = True
            out["image"] = (mask, _pad(new_input_embeds, max_len, dim, dt), labels_padded)
            out["text"] = (text_mask, _pad(text_embeds, max_text_len, dim, dt))
            out["images"] = (image_mask, _pad(image_embeds, max_image_len, dim, dt))
        if pure_text_embeds is not None:
            max_pure_len = out["image"][1].shape[1] + N_INDICATOR_TOKEN if new_input_embeds else max(
                x.shape[0] for x in pure_text_embeds)
            n, dim, dt = len(pure_text_embeds), pure_text_embeds[0].shape[1], pure_text_embeds[0].dtype
            labels_padded = torch.full((n, max_pure_len), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((n, max_pure_len), dtype=torch.bool)
            for i, (emb, lab) in enumerate(zip(pure_text_embeds, pure_text_labels)):
                labels_padded[i, :emb.shape[0]] = lab
                mask[i, :emb.shape[0]] = True
            out["pure"] = (mask, _pad(pure_text_embeds, max_pure_len, dim, dt), labels_padded)
        return out

    def forward(self, input_ids, attention_mask, labels, image_features, align_ids=None):
        """-> (loss, logits [B, T, V], attention_mask); image samples first, then text-only ones (finetune)."""
        parts = self.prepare(input_ids, attention_mask, labels, image_features)
        attention_mask, inputs_embeds, labels = parts["image"] if "image" in parts else (None, None, None)
        if self.stage == "pretrain":
            align_indicators = self.align_indicators(align_ids).unsqueeze(dim=1)
            inputs_embeds = torch.cat([inputs_embeds[:, :1, :], align_indicators, inputs_embeds[:, 1:, :]], dim=1)
        else:
            if inputs_embeds is not None:
                text_attention_mask, text_embeds = parts["text"]
                _, image_embeds = parts["images"]
                w_scores = self.gated_weight_layer.forward(image_embeds, text_embeds[:, 1:, :],
                                                           text_attention_mask[:, 1:])
                align_indicators = self.align_indicators.lin_comb(w_scores).unsqueeze(dim=1)
                inputs_embeds = torch.cat([inputs_embeds[:, :1, :], align_indicators, inputs_embeds[:, 1:, :]], dim=1)
            if "pure" in parts:
                pmask, pembeds, plabels = parts["pure"]
                inputs_embeds = pembeds if inputs_embeds is None else torch.cat([inputs_embeds, pembeds])
                labels = plabels if labels is None else torch.cat([labels, plabels])
                attention_mask = pmask if attention_mask is None else torch.cat([attention_mask, pmask])
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(), labels=labels)
        return out.loss, out.logits, attention_mask
