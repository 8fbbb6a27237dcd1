"""Fine-tuning with PEFT as a GPU job: the config and its checks (`config`, pure, which the
service imports) and the trainer the job runs (`python -m thinkube_train CONFIG.json`)."""
