"""Text-level safety judgements shared by evaluation and online-RL rewards (torch-free).

`refusal`: does an answer refuse (phrase/pattern list, or a judge model behind a callable);
`validity`: is an answer well-formed text rather than degenerate output.
"""
