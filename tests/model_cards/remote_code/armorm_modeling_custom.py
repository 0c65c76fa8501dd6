"""ArmoRM's remote code (RLHFlow/ArmoRM-Llama3-8B-v0.1, modeling_custom.py), re-implemented
for the test checkpoint: the same module names and tensors, the same reading of rewards (the
token before the first pad, wrapping to the last token), of the gating position (the last
`<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`) and of the score."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput

GATING_PATTERN = [128009, 128006, 78191, 128007, 271]


class GatingNetwork(nn.Module):
    def __init__(self, in_features, out_features, temperature=10.0, hidden_dim=1024, n_hidden=3):
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1))
        sizes = [in_features] + [hidden_dim] * n_hidden
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
                                    + [nn.Linear(sizes[-1], out_features)])

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        x = self.layers[-1](x)
        return torch.softmax(x / self.temperature, dim=1) * self.logit_scale[0]


def gating_position(ids):
    n = len(GATING_PATTERN)
    for start in range(len(ids) - n, -1, -1):
        if ids[start:start + n] == GATING_PATTERN:
            return start
    raise ValueError("Token pattern not found in the list.")


@dataclass
class CustomOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    hidden_state: torch.FloatTensor = None
    prompt_embedding: torch.FloatTensor = None
    gating_output: torch.FloatTensor = None
    score: torch.FloatTensor = None
    logits: torch.FloatTensor = None


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        extra = config.to_dict()
        self.num_objectives = extra.get("num_objectives", 19)
        self.regression_layer = nn.Linear(config.hidden_size, self.num_objectives, bias=False)
        self.post_init()
        self.reward_transform_matrix = nn.Parameter(torch.eye(self.num_objectives), requires_grad=False)
        self.gating = GatingNetwork(config.hidden_size, self.num_objectives,
                                    temperature=extra.get("gating_temperature", 10),
                                    hidden_dim=extra.get("gating_hidden_dim", 1024),
                                    n_hidden=extra.get("gating_n_hidden", 3))

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        states = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=states.device)
        first_pad = torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1)
        read_at = (first_pad - 1) % input_ids.shape[-1]
        hidden = states[rows, read_at]
        rewards = self.regression_layer(hidden)
        prompt_embedding = states[rows, [gating_position(ids.tolist()) for ids in input_ids]]
        gating_output = self.gating(prompt_embedding)
        score = torch.sum(gating_output * (rewards @ self.reward_transform_matrix), dim=1)
        return CustomOutput(rewards=rewards, hidden_state=hidden, prompt_embedding=prompt_embedding,
                            gating_output=gating_output, score=score, logits=score)
