"""Training for scratch-diffusion, installed as ``scratch_diffusion.training``.

``train.py`` is the script (``accelerate launch training/train.py …``); it reads top to bottom and
delegates everything else to the modules here:

===================  ==========================================================================
``cli``              the command line (diffusers' ``train_unconditional.py`` names) and its checks
``data``             datasets → uint8 tensors decoded once, the epoch-seeded sampler, augmentation
``models``           ``UNet2DModel`` presets (tiny / small / base) or a JSON config
``losses``           the DDPM-family and flow-matching objectives (noise from the schedulers)
``checkpoints``      atomic ``accelerate.save_state`` checkpoints, rotation and resume
``export``           the noise scheduler, the saved pipeline and the sample grid
``model_card``       the Hugging Face model card (``README.md``)
``hub``              ``HfApi.create_repo`` + ``upload_folder``
===================  ==========================================================================
"""
