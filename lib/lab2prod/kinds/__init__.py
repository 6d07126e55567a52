"""What a request is for each kind of model (image, text, tensor): codec and guard."""
